"""The REST gateway (FastAPI). ``services.gateway.app:app`` is the ASGI application."""
