"""The job store: SQLAlchemy 2.0 models, sessions and the small queries the API and worker share.

The database, not Celery's result backend, is the source of truth for every job's state.
"""
