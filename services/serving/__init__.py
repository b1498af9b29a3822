"""Serving hardened models: model cache, dynamic batching, output policies, query budgets, export.

The API process (``midre serve --role api`` or ``uvicorn services.gateway.app:app``) loads models
on demand from the artifact store; training workers never serve. See ``docs/service.md`` (Serving).
"""
