"""Every Prometheus metric voxq exports, defined once (the dashboard in k8s/grafana reads
exactly these names; k8s/grafana/METRICS.md is the contract). Label values are small fixed
sets: never a session id, a job id or text."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_LIVE = Gauge("voxq_sessions_live", "Sessions this worker drives now")
SESSIONS_CLAIMED = Counter("voxq_sessions_claimed", "Sessions claimed, new and taken over")
TAKEOVERS = Counter("voxq_takeovers", "Sessions taken over from a dead or draining worker")
SESSIONS_FINISHED = Counter("voxq_sessions_finished", "Sessions this worker ended",
                            ["status"])
CHUNKS_RELAYED = Counter("voxq_chunks_relayed", "Audio chunks sent to a vendor (replays too)")
BYTES_RELAYED = Counter("voxq_bytes_relayed", "PCM bytes sent to a vendor")
RELAY_LATENCY = Histogram(
    "voxq_relay_latency_seconds", "Producer XADD to the chunk's send to the vendor",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0))
VENDOR_CONNECTS = Counter("voxq_vendor_connects", "Vendor sessions opened", ["vendor"])
VENDOR_RECONNECTS = Counter("voxq_vendor_reconnects",
                            "Vendor sessions reopened after a failure", ["vendor"])
VENDOR_ERRORS = Counter("voxq_vendor_errors", "Vendor errors by class", ["vendor", "kind"])
TTS_JOBS = Counter("voxq_tts_jobs", "TTS job runs ended", ["status"])
TTS_JOB_DURATION = Histogram(
    "voxq_tts_job_duration_seconds", "Time a TTS job runs",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0))
REDIS_ERRORS = Counter("voxq_redis_errors", "Redis calls that failed", ["component"])


# Ingest gateway (`voxq ingest`); ``dialect`` is raw|file|twilio|audiohook, ``reason`` a short
# fixed word (auth, limit, protocol, audio, config, redis, draining)
INGEST_CONNECTIONS = Counter("voxq_ingest_connections", "Ingest connections accepted", ["dialect"])
INGEST_ACTIVE = Gauge("voxq_ingest_active", "Ingest connections open now", ["dialect"])
INGEST_FRAMES = Counter("voxq_ingest_frames", "Audio messages received by the gateway", ["dialect"])
INGEST_BYTES = Counter("voxq_ingest_bytes", "Audio payload bytes received by the gateway", ["dialect"])
INGEST_REJECTS = Counter("voxq_ingest_rejects", "Ingest handshakes or connections refused",
                         ["dialect", "reason"])
INGEST_ACK_LATENCY = Histogram(
    "voxq_ingest_ack_latency_seconds", "Audio message received to its chunk acknowledged by Redis",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0))

# Access control: ``reason`` is a Denial value (no_key, bad_key, expired, scope, tenant,
# rate_limited, quota, no_scope_declared); ``action`` created|revoked
AUTH_DENIED = Counter("voxq_auth_denied", "Requests and ingest connections refused by access "
                                          "control", ["reason"])
KEY_ADMIN = Counter("voxq_key_admin", "API keys created and revoked", ["action"])
