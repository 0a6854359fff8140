"""Celery entry point: the app, the step task consumer, poison screening to the DLQ, and beat."""
