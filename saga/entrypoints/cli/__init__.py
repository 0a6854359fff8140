"""Operator commands of the `saga` CLI, one module per group; saga.entrypoints.cli.main mounts them.

Exit codes everywhere: 0 done, 1 refused or not found, 2 usage or configuration;
`saga wait` adds 3 (timed out) and 4 (the saga ended in a status not waited for).
"""
