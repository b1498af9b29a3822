"""The job queue both sides share: the Celery app's configuration and the dispatcher that publishes
jobs. The gateway sends with it, the worker consumes with it; neither imports the other."""
