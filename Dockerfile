# medtwin service image (multi-stage). Build:  docker build -t medtwin .
# Run alone:  docker run -e MEDTWIN_DB=postgresql://... -e MEDTWIN_SECRET=... \
#               -v keys:/keys -e MEDTWIN_KEY_FILE=/keys/medtwin.key -p 8000:8000 medtwin
#             (the key file: owned by uid 1883, mode 0600; medtwin refuses one others can read)
# The whole topology (PostgreSQL, Mosquitto with TLS, two workers behind a proxy, Dask):
# compose.yaml. The same image runs the service, the ingester (`medtwin live`) and Dask.

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
# uid 1883 is also the eclipse-mosquitto image's user: the broker reads the 0600 password and
# ACL files `medtwin key add` writes into the volume they share (compose.yaml's mqtt-auth).
FROM python:3.11-slim AS run
RUN apt-get update && apt-get install -y --no-install-recommends tini curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1883 medtwin \
    && useradd --create-home --uid 1883 --gid 1883 medtwin \
    && mkdir -p /mosquitto/auth /var/lib/medtwin \
    && chown medtwin:medtwin /mosquitto/auth /var/lib/medtwin
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels "medtwin[all]" \
    && rm -rf /wheels
USER medtwin
WORKDIR /home/medtwin
# (no PROMETHEUS_MULTIPROC_DIR: `medtwin serve --workers N` makes a fresh one for its workers)
ENV PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
    CMD curl -fsS http://127.0.0.1:8000/health/live || exit 1
ENTRYPOINT ["tini", "--"]
# one container = one service replica with N uvicorn workers; settings come from MEDTWIN_*
# (behind a proxy add --proxy-headers and MEDTWIN_TRUSTED_PROXIES, as compose.yaml does)
CMD ["medtwin", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
