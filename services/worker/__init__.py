"""The Celery worker: thin tasks that call ``midre`` and record everything in the database."""
