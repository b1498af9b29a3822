# The MIDRE service image: the API (uvicorn) and the Celery worker run from the same image.
# Build: docker build -t midre .   (docker-compose.yml builds it for you)
FROM python:3.11-slim

COPY --from=ghcr.io/astral-sh/uv:0.13 /uv /uvx /bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PYTHONUNBUFFERED=1 \
    PATH="/app/.venv/bin:$PATH"

WORKDIR /app

# Dependencies first (cached layer), exactly as locked: the service and the MLflow hand-off's client.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra service --extra mlflow --no-install-project

# Then the project itself.
COPY midre ./midre
COPY services ./services
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv uv sync --frozen --no-dev --extra service --extra mlflow

RUN useradd --create-home --uid 1000 midre && mkdir -p /data && chown midre /data
USER midre
ENV MIDRE_HOME=/data

EXPOSE 8000
# A single container migrates, then serves (from /app/migrations, the Alembic scripts copied above).
# docker-compose.yml runs `midre migrate` once as its own service and overrides this command for the
# API (no migration) and the workers (`midre worker`).
CMD ["sh", "-c", "midre migrate && exec uvicorn services.gateway.app:app --host 0.0.0.0 --port 8000"]
