"""What the API says about itself: its version, title, description and tag list.

A module of constants with no imports of the gateway, so the app (``services.gateway.app``) and the
routers that report the version (the Open Inference Protocol's server metadata,
``services.gateway.routers.oip``) share them without importing each other.
"""

from __future__ import annotations

#: The REST API's version (the OpenAPI document's ``info.version`` and ``GET /v2``'s ``version``).
API_VERSION = "1.0.0"
TITLE = "MIDRE service"
DESCRIPTION = """\
MIDRE defense-as-a-service: upload a face dataset (or use the built-in `digits`), submit a
training job with a defense (MIDRE random erasing by default), follow its progress, download the
hardened checkpoint and the privacy-utility report.

Authenticate every `/v1` call with `Authorization: Bearer <api key>`. The first key of a tenant
comes from `midre admin create-key --tenant NAME` (an `admin` key); an admin key mints more with
`POST /v1/keys`, each with scopes: `admin` (everything, keys included), `jobs` (datasets, jobs,
artifacts, models, policies, exports, predict) or `predict` (predict and the served models' public
metadata only, optionally limited to some models). Each operation names the scope it needs
(`x-required-scope`). Errors are RFC 9457 problem details.
"""

#: The OpenAPI document's tags, in the order the docs pages list them.
OPENAPI_TAGS = [
    {"name": "datasets", "description": "Upload or register training data."},
    {"name": "jobs", "description": "Train / attack-evaluate / pipeline jobs."},
    {"name": "reviews", "description": "Blind human review of a study's reconstructions: invite reviewers "
                                       "(jobs scope), answer trials (review scope), human AttAcc."},
    {"name": "artifacts", "description": "Checkpoints, reports and plots of a job."},
    {"name": "models", "description": "Model cards."},
    {"name": "audit policies", "description": "Audits that run by themselves when a model is uploaded (jobs scope)."},
    {"name": "serving", "description": "Predict with a trained model; output policy, budget, export."},
    {"name": "keys", "description": "Mint, list and revoke scoped API keys (admin scope)."},
    {"name": "webhooks", "description": "Signed webhooks (Standard Webhooks) for job events (admin scope)."},
    {"name": "integrations", "description": "Hand results to the tenant's MLflow (admin scope)."},
    {"name": "inference (v2)", "description": "Served models over the Open Inference Protocol (KServe v2)."},
    {"name": "health", "description": "Liveness and readiness."},
]
