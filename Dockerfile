# syntax=docker/dockerfile:1
# breakglass: the watchdog, agent and web page in one process.
# Build:  docker build -t breakglass:0.1.0 .
# Run:    config at /etc/breakglass/config.yaml, keys and tokens mounted beside
#         it (read-only, owned by UID 10001), the SQLite store on a volume at
#         /var/lib/breakglass; the config binds 0.0.0.0 with token auth so a
#         published port reaches it. Layout and commands: docs/operations.md 4.3.

# --- builder: turn the source tree into wheels (ours and its runtime deps) ---
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY breakglass ./breakglass
# Dependencies come from pyproject's [project] dependencies only; the dev extra
# (pytest, ruff, playwright, ...) never reaches the image. constraints.txt pins them to the
# versions the suite passed with.
RUN pip wheel --wheel-dir /wheels -c constraints.txt .

# --- runtime: the wheels installed into a clean slim image, run as non-root ---
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels breakglass \
 && groupadd --system --gid 10001 breakglass \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/breakglass --shell /usr/sbin/nologin breakglass \
 && mkdir -p /etc/breakglass /var/lib/breakglass \
 && chown 10001:10001 /var/lib/breakglass \
 && chmod 0750 /var/lib/breakglass
# Config, SSH keys, known_hosts and tokens are mounted here read-only.
WORKDIR /var/lib/breakglass
VOLUME ["/var/lib/breakglass"]
USER 10001:10001
EXPOSE 8787
# slim has no curl: ask /healthz with the interpreter that is already here.
# 8787 is web.port in the shipped configs; change both together.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["breakglass"]
CMD ["serve", "-c", "/etc/breakglass/config.yaml"]
