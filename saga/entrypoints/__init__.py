"""Entry points: the saga CLI, HTTP API, Celery worker and beat, saga up, the demo."""
