"""The application layer: what a request does to the domain, whichever transport it came by.

The REST routers, the dashboard's pages, the Open Inference Protocol routes and the integrations are
thin transports over these typed functions, which take a database session (or the
:class:`~services.ops.context.ServiceContext`), a tenant or caller and typed arguments, return ORM rows
or public shapes, and raise :class:`~services.ops.errors.ApiError` for the caller to answer. Nothing
here imports a transport (``services.gateway``) or the worker.

- :mod:`~services.ops.jobs`: submit (references, inheritance, resolution, quotas, queueing), list, read,
  events, units, cancel; which jobs are models;
- :mod:`~services.ops.datasets`: an uploaded archive checked and stored, ``digits`` or an allow-listed
  folder registered; list, read, delete;
- :mod:`~services.ops.artifacts`: a job's artifacts and the stored file of one;
- :mod:`~services.ops.models`: which checkpoint is a job's model; its card, README and audits; the
  upload of a model trained elsewhere;
- :mod:`~services.ops.serving`: a servable model resolved and cached, the query charge, the batched
  forward pass, predict, the model list, output policy and budget, export;
- :mod:`~services.ops.keys`, :mod:`~services.ops.webhooks`, :mod:`~services.ops.integrations`: API keys,
  signed webhooks and their deliveries, the MLflow hand-off's settings;
- :mod:`~services.ops.quotas`: what one tenant may hold or run at once;
- :mod:`~services.ops.schemas` and :mod:`~services.ops.views`: the public shapes, and ORM rows as them;
- :mod:`~services.ops.context`, :mod:`~services.ops.errors`, :mod:`~services.ops.files`,
  :mod:`~services.ops.storable`: the caller and the service context, the errors, received files and
  the threads their work runs in, text the database cannot store.
"""
