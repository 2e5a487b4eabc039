# The one image of every compose service: worker, beat, flower and the demo's sandbox.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: no .env (see .dockerignore), so no secret is baked in.
COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
RUN pip install .
# The demo's schedule and settings (fake credentials); the default schedule is config/.
COPY deploy ./deploy

# Closes need no privileges.
RUN useradd --system --uid 10001 --home-dir /app streamctl
USER streamctl

CMD ["streamctl", "worker"]
