"""Service tests: gateway, worker, database and storage, on SQLite and on the real servers."""
