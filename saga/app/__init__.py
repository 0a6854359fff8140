"""Application services: orchestrator, relay, sweeper, watcher, chain steps, audit, DLQ."""
