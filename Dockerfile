# voxq: one image, three roles. The command picks the role:
#
#   docker run voxq api          # the HTTP API on :8000
#   docker run voxq worker       # a transcriber (probes and /metrics on :8081)
#   docker run voxq tts-worker   # an RQ worker for text-to-speech jobs
#
# Set REDIS_URL to share one Redis between roles; without it each role starts a private embedded
# Redis (only useful to try one role alone). The offline `local` engine is included: pocketsphinx
# with its en-US model (recognition) and espeak-ng from the espeakng-loader wheel (speech), MP3
# through the libsndfile bundled in the soundfile wheel. No system package is needed at run time.
#
# Portable on purpose: the classic Dockerfile syntax only (no heredocs, COPY --chmod/--link,
# RUN --mount, no `# syntax=` line), so Docker (BuildKit or not), Podman/Buildah and Kaniko build
# it unchanged. tests/k8s/test_dockerfile.py keeps it that way.
#
#   docker build -t voxq .                  # the image (the last stage, `image`)
#   docker build --target smoke .           # also runs the smoke test inside the image; not shipped
#                                           # (the classic builder runs it on every build)
#   scripts/build-image --help              # Podman/Buildah, timings, a local base without a registry
#
# PYTHON_IMAGE is the base of every stage: the official slim Python by default; any Debian-based
# image with python3 and python3-venv works (scripts/build-image --local-base makes one with
# debootstrap, for networks without an image registry). PIP_INDEX_URL points pip at a mirror.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with voxq and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
# A pip mirror, if any (unset: pip's own default or the base image's pip config); build stage only.
ARG PIP_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler only for a dependency that has no wheel for the target platform (every dependency has
# manylinux wheels for x86_64 today); this stage is thrown away.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/voxq
ENV PATH=/opt/voxq/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml, so their layer survives source edits.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY voxq ./voxq
COPY producer ./producer
COPY workers ./workers
COPY api ./api
# A regular (not editable) install, compiled to bytecode now: the root filesystem is read-only at
# run time. Then prove the image can do what it is for: every role's command resolves, the local
# engine loads (pocketsphinx model, libespeak-ng), and libsndfile writes MP3.
RUN pip install --no-deps . \
 && python -m compileall -q /opt/voxq \
 && voxq --help > /dev/null \
 && for role in api worker tts-worker; do voxq "$role" --help > /dev/null; done \
 && python -c "import os, pocketsphinx, espeakng_loader, soundfile; \
assert os.path.isdir(pocketsphinx.get_model_path()), 'pocketsphinx model missing'; \
assert os.path.exists(espeakng_loader.get_library_path()), 'libespeak-ng missing'; \
assert 'MP3' in soundfile.available_formats(), 'libsndfile without MP3'"

# --- runtime: the virtual environment on a clean base image, no compiler, non-root ---------------
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build /opt/voxq /opt/voxq
# Docker's HEALTHCHECK (Kubernetes ignores it and uses the pod's probes): docker/voxq-healthcheck
# probes the role this container runs - the API's /healthz, a worker's /healthz on
# VOXQ_WORKER_HEALTH_PORT. The TTS worker has no health endpoint: its process being there is the
# check. A plain COPY and a chmod, which every builder takes.
COPY docker/voxq-healthcheck /opt/voxq/bin/voxq-healthcheck
RUN chmod 0755 /opt/voxq/bin/voxq-healthcheck \
 && groupadd --system --gid 10001 voxq \
 && useradd --system --uid 10001 --gid voxq --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voxq

# HOME and TMPDIR on /tmp (an emptyDir in Kubernetes) because the root filesystem is read-only.
# The API listens on all addresses in a container; a worker serves its probes on 8081.
ENV PATH=/opt/voxq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    VOXQ_API_HOST=0.0.0.0 \
    VOXQ_WORKER_HEALTH_PORT=8081
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 8081
# voxq handles SIGTERM itself: the API shuts down gracefully, a worker drains (hands its sessions
# off), the TTS worker finishes its current job.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["voxq-healthcheck"]
ENTRYPOINT ["voxq"]
CMD ["api"]

# --- smoke: the runtime image tested from the inside, as its own user; never shipped -------------
# Every role's command, `voxq demo --fast` on the bundled sample with the embedded Redis, a
# `voxq tts` to MP3, the health check against a running API, no compiler, the package read-only
# for the runtime user. Build it with `--target smoke`; a failed check fails the build.
FROM runtime AS smoke
COPY docker/smoke.py /opt/voxq-smoke/smoke.py
RUN python /opt/voxq-smoke/smoke.py

# --- image: what `docker build .` produces when no --target is given - the runtime stage ---------
FROM runtime AS image
