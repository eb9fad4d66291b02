# syntax=docker/dockerfile:1
# sers-monitor images. Two targets:
#   docker build --target hub   -t sers-hub   .   # the dashboard; runs as an unprivileged user
#   docker build --target agent -t sers-agent .   # the GPU node agent; see docs/deploy/README.md
# BASE is any Debian-family image with python3 (>= 3.11) and its venv module. CI builds against a
# local debootstrap image with --build-arg BASE=localhost/sers-ci-base:bookworm.
ARG BASE=python:3.12-slim

# ---------------------------------------------------------------- build: a venv with the project
FROM ${BASE} AS build
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, LICENSE and the three packages.
COPY . .
RUN python3 -m venv /opt/sers \
 && /opt/sers/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/sers/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
 && find /opt/sers -name __pycache__ -prune -exec rm -rf {} +

# ---------------------------------------------------------------- runtime: base + the venv only
FROM ${BASE} AS runtime
ENV PATH=/opt/sers/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/sers /opt/sers

# ---------------------------------------------------------------- agent
# Run with: docker run -d --gpus all --pid=host --network host sers-agent --hub http://HUB:8000
# It stays root inside the container (no added capabilities): NVML lists every process on the
# GPUs by host pid, and the agent reads /proc of processes owned by every user to name them.
FROM runtime AS agent
# libnss-sss resolves LDAP/SSSD users through the host's sssd socket when /var/lib/sss/pipes is
# mounted (its install adds "sss" to /etc/nsswitch.conf, checked below); without the socket,
# lookups use /etc/passwd (mount the host's) and then show the numeric uid. Package versions
# follow the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnss-sss \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && grep -Eq '^passwd:.*[[:space:]]sss' /etc/nsswitch.conf
# The NVIDIA container toolkit mounts libnvidia-ml (NVML) only for the "utility" capability.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
ENTRYPOINT ["sers-agent"]

# ---------------------------------------------------------------- hub
FROM runtime AS hub
RUN groupadd --system --gid 10001 sers \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sers --create-home \
        --shell /usr/sbin/nologin sers
WORKDIR /var/lib/sers
USER 10001:10001
# Set the port with SERS_PORT (not --port) so the health check below finds it.
ENV SERS_HOST=0.0.0.0 \
    SERS_PORT=8000 \
    SERS_STATE_DB=/var/lib/sers/sers-hub.sqlite3
EXPOSE 8000
VOLUME ["/var/lib/sers"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SERS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["sers-hub"]
