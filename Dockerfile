# syntax=docker/dockerfile:1.7
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
# This repository's CI has no container engine: the image is not built there.
# tests/k8s/test_dockerfile.py checks this file's structure statically.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with voxq and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
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

# --- runtime: the virtual environment on a clean slim image, no compiler, non-root ---------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 voxq \
 && useradd --system --uid 10001 --gid voxq --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin voxq
COPY --from=build /opt/voxq /opt/voxq

# Docker's HEALTHCHECK (Kubernetes ignores it and uses the pod's probes): probe the role this
# container runs - the API's /healthz, a worker's /healthz on VOXQ_WORKER_HEALTH_PORT. The TTS
# worker has no health endpoint: its process being there is the check.
COPY --chmod=0755 <<'EOF' /opt/voxq/bin/voxq-healthcheck
#!/opt/voxq/bin/python
import os
import sys
import urllib.request


def role():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [os.path.basename(a.decode(errors="replace")) for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if "voxq" in argv[:2] and argv.index("voxq") + 1 < len(argv):
            return argv[argv.index("voxq") + 1]
    return None


name = role()
port = {"api": os.environ.get("VOXQ_API_PORT", "8000"),
        "worker": os.environ.get("VOXQ_WORKER_HEALTH_PORT")}.get(name)
if name is None:
    sys.exit("no voxq process")
if not port:
    sys.exit(0)
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as e:
    sys.exit(f"{name}: /healthz on port {port}: {e}")
EOF

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
