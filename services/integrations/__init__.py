"""Outbound hand-offs of the service: signed webhooks (``webhooks``), with a durable outbox in the DB."""
