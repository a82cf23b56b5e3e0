# medtwin service image (multi-stage). Build:  docker build -t medtwin .
# Run alone:  docker run -e MEDTWIN_DB=postgresql://... -e MEDTWIN_SECRET=... \
#               -v keys:/keys -e MEDTWIN_KEY_FILE=/keys/medtwin.key -p 8000:8000 medtwin
# The whole topology (PostgreSQL, Mosquitto with TLS, two workers behind a proxy, Dask):
# compose.yaml.

# --- build: a wheel of medtwin and of every dependency --------------------------------------
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --upgrade pip \
    && python -m pip wheel --no-cache-dir --wheel-dir /wheels ".[all]"

# --- run: only the wheels, a non-root user ----------------------------------------------------
FROM python:3.11-slim AS run
RUN apt-get update && apt-get install -y --no-install-recommends tini curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 medtwin
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels "medtwin[all]" \
    && rm -rf /wheels
USER medtwin
WORKDIR /home/medtwin
ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1
ENTRYPOINT ["tini", "--"]
# one container = one service replica with N uvicorn workers; settings come from MEDTWIN_*
CMD ["medtwin", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", \
     "--proxy-headers"]
