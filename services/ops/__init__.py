"""The application layer: what a request does to the domain, whichever transport it came by.

The REST routers, the dashboard's pages, the Open Inference Protocol routes and the integrations are
thin transports over these typed functions, which take a database session, a tenant and typed
arguments and raise :class:`~services.ops.errors.ApiError` for the caller to answer:

- :mod:`~services.ops.jobs`: submit (references, inheritance, resolution, quotas, queueing), list, read,
  events, units, cancel; which jobs are models;
- :mod:`~services.ops.quotas`: what one tenant may hold or run at once.
"""
