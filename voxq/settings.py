"""Settings read once from the environment; secrets are SecretStr so they never print."""

from __future__ import annotations

import logging
from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voxq.errors import ConfigError, InvalidInput


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every knob voxq reads; the README's configuration table lists the same names."""

    model_config = SettingsConfigDict(env_prefix="VOXQ_", extra="ignore", populate_by_name=True)

    # Redis
    redis_url: str | None = Field(
        default=None,
        validation_alias=_env("REDIS_URL", "VOXQ_REDIS_URL"),
        description="Redis to use; unset starts an embedded redis-server.",
    )
    rq_redis_url: str | None = Field(
        default=None,
        description="Single Redis for RQ (the TTS queue); default REDIS_URL, required when "
                    "REDIS_URL is a cluster (redis+cluster://).")
    wait_replicas: int = Field(
        default=0, ge=0, le=16,
        description="Producers count audio as delivered only once this many replicas have it "
                    "(WAIT after each write); 0: when the primary has it.")
    wait_timeout_ms: int = Field(
        default=1000, ge=1, le=60000,
        description="How long one WAIT for replicas may block before the write is retried.")
    prefix: str = Field(default="voxq", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                        description="Key prefix of every key voxq writes.")

    # Sessions and streams
    default_chunk_ms: int = Field(default=100, ge=20, le=200,
                                  description="Chunk duration producers publish.")
    max_session_seconds: int = Field(default=4 * 3600, ge=10,
                                     description="Longest session accepted.")
    partial_maxlen: int = Field(default=200, ge=10,
                                description="Approximate cap on a session's partial stream.")
    retention_seconds: int = Field(default=7 * 24 * 3600, ge=60,
                                   description="How long a finished session's keys live.")
    idle_timeout_seconds: float = Field(default=120.0, gt=0,
                                        description="No audio for this long: `abandoned`.")

    # Worker
    worker_name: str | None = Field(default=None,
                                    description="Consumer name; default host-pid.")
    max_sessions: int = Field(default=500, ge=1, description="Sessions one worker drives.")
    claim_timeout_seconds: float = Field(
        default=4.0, gt=0.2, description="A claim idle this long is taken over.")
    keep_audio: bool = Field(
        default=False,
        description="Keep audio behind the checkpoint until retention (default: trim it).")
    sweep_interval_seconds: float = Field(
        default=60.0, gt=0, description="How often one worker sweeps expired sessions' leftovers.")
    drain_grace_seconds: float = Field(
        default=20.0, ge=0,
        description="On SIGTERM, how long sessions already at end of audio may finish.")
    worker_health_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of the worker's /healthz, /readyz and /metrics (unset: off).")
    session_queue_chunks: int = Field(
        default=50, ge=2, description="Chunks buffered per session before backpressure.")
    read_window_ms: float = Field(
        default=5.0, ge=0.5, le=200.0,
        description="Least time between two audio reads of a worker (batching window): relay "
                    "latency grows by up to this much, Redis and worker CPU per read shrink.")

    # Producer
    producer_buffer_chunks: int = Field(
        default=600, ge=1, description="Chunks a Publisher holds before it blocks.")

    # Ingest gateway (`voxq ingest`; docs/protocols/ingest.md)
    ingest_host: str = Field(default="127.0.0.1", description="Address the ingest gateway binds.")
    ingest_port: int = Field(default=8100, ge=0, le=65535,
                             description="Port of the ingest gateway (WebSocket, /healthz, /metrics).")
    ingest_key: SecretStr | None = Field(
        default=None, description="Key ingest clients present (`Authorization: Bearer KEY` or "
                                  "`?key=KEY`); default: VOXQ_API_KEY.")
    ingest_public_url: str | None = Field(
        default=None, description="The gateway's public wss:// base URL as platforms dial it "
                                  "(Twilio signs it; needed behind a proxy).")
    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Twilio auth token: when set, X-Twilio-Signature is required.")
    audiohook_api_key: SecretStr | None = Field(
        default=None, description="AudioHook API key Genesys sends as X-API-KEY.")
    audiohook_client_secret: SecretStr | None = Field(
        default=None, description="AudioHook client secret (base64): when set, HTTP message "
                                  "signatures are required.")
    ingest_max_message_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest WebSocket message the gateway accepts.")
    ingest_max_sessions: int = Field(
        default=2000, ge=1, description="Sessions one gateway process holds at once.")
    ingest_max_bytes_per_second: int = Field(
        default=2_000_000, ge=1000,
        description="Most bytes per second one connection may send (averaged over 5 s).")
    ingest_track_lag_ms: int = Field(
        default=2000, ge=100, le=60000,
        description="Twilio both tracks: how far one track may run ahead before the other is "
                    "taken as silent.")
    ingest_drain_grace_seconds: float = Field(
        default=25.0, ge=0, description="On SIGTERM, how long platform calls may go on.")

    # API
    api_host: str = Field(default="127.0.0.1", description="Address the API binds.")
    api_port: int = Field(default=8000, ge=0, le=65535, description="Port the API binds.")
    api_key: SecretStr | None = Field(
        default=None, description="Bootstrap admin key (tenant default): while it is set or any "
                                  "key exists (voxq keys create), the API requires "
                                  "`Authorization: Bearer KEY`.")
    token_secret: SecretStr | None = Field(
        default=None, description="Signs short-lived browser tokens (POST /v1/tokens); same on "
                                  "every API replica. Unset: derived from VOXQ_API_KEY; neither "
                                  "set: tokens are off.")
    tenant: str = Field(
        default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Tenant of the sessions `voxq produce` and Publisher create.")
    rate_limit_per_second: float = Field(
        default=50.0, ge=0, description="Requests per second one API key (and its tokens) may "
                                        "make, averaged; 0: no rate limit.")
    rate_limit_burst_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="A key's burst: this many seconds' worth of "
                                                "its rate at once.")
    rate_limit_scopes: dict[str, float] = Field(
        default={},
        description='Per-scope request rates as JSON, e.g. {"tts:write": 5, "admin": 200}; a '
                    "key gets the highest of its scopes' rates, else VOXQ_RATE_LIMIT_PER_SECOND.")
    tts_daily_chars_per_tenant: int = Field(
        default=0, ge=0, description="TTS characters one tenant may submit per UTC day (over "
                                     "it: 429 with Retry-After); 0: no quota.")
    docs_private: bool = Field(
        default=False, description="/docs and /openapi.json need a key (any scope) while "
                                   "authentication is on.")
    api_metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Serve the API's /metrics on this port too, without a key (for Prometheus "
                    "inside the cluster); the API port's /metrics needs metrics:read or admin "
                    "while authentication is on.")
    api_max_connections: int = Field(
        default=2000, ge=8, le=1_000_000,
        description="Open client connections the API holds; past it, the one that has waited "
                    "longest for a request head is closed (or the new one, if none waits).")
    api_header_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600,
        description="A connection must deliver a whole request head this soon after it opens "
                    "(or after its previous answer), else it is closed (408).")
    api_body_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600,
        description="A request body must be complete this soon after its head, else the "
                    "connection is closed.")
    api_keepalive_timeout_seconds: int = Field(
        default=5, ge=1, le=600, description="An idle keep-alive connection is closed after this.")
    api_max_header_bytes: int = Field(
        default=16384, ge=1024, le=1 << 20,
        description="Largest request head (request line and headers); larger is a 400.")
    api_backlog: int = Field(default=2048, ge=16, le=65535,
                             description="Listen backlog of the API's socket.")
    api_redis_connections: int = Field(
        default=8, ge=1, le=256,
        description="Redis connections of the API's route pool (per node on a cluster); the "
                    "event hub adds one. A route waits for a free one, never opens more.")
    api_max_followers: int = Field(
        default=5000, ge=1,
        description="Live followers (SSE, WebSocket, firehose) one API process serves; beyond "
                    "it 503 with Retry-After.")
    api_public_url: str | None = Field(
        default=None, description="The API's public base URL, for transcript links in webhooks "
                                 "(empty: links are paths such as /v1/sessions/ID/transcript).")
    webhook_urls: str | None = Field(
        default=None, description="Comma-separated URLs that receive every session's end event "
                                "(session.finished/failed/abandoned), signed with "
                                "VOXQ_WEBHOOK_SECRET.")
    webhook_secret: SecretStr | None = Field(
        default=None, description="The deployment's webhook secret (whsec_ + base64, at least "
                                  "16 bytes): signs VOXQ_WEBHOOK_URLS and per-session webhooks; "
                                  "POST /v1/webhooks subscriptions get secrets derived from it. "
                                  "Webhooks are off while it is unset.")
    webhook_max_age_seconds: float = Field(
        default=24 * 3600, gt=0, description="How long a failing webhook delivery is retried "
                                             "(exponential backoff) before it is given up.")
    webhook_retry_base_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="First retry delay of a failed webhook "
                                                "delivery; each next one doubles (at most 1 h).")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Deadline of one webhook POST.")
    webhook_events: str = Field(
        default="session.finished,session.failed,session.abandoned",
        description="Comma-separated events VOXQ_WEBHOOK_URLS receive: session.finished, "
                    "session.failed, session.abandoned and transcript.final (each final "
                    "segment as it is recognised).")
    webhook_include_transcript: bool = Field(
        default=False, description="Put the final transcript's segments into the end events "
                                   "of VOXQ_WEBHOOK_URLS and per-session webhooks.")
    api_follower_queue: int = Field(
        default=1000, ge=10,
        description="Events queued for one follower before it is cut off as too slow (it "
                    "resumes with its last event id).")

    # Local engine
    local_model_dir: str | None = Field(
        default=None, description="pocketsphinx model directory; default: the bundled en-us.")

    # AWS (standard AWS variable names)
    aws_access_key_id: SecretStr | None = Field(
        default=None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=_env("AWS_SECRET_ACCESS_KEY"))
    aws_session_token: SecretStr | None = Field(
        default=None, validation_alias=_env("AWS_SESSION_TOKEN"))
    aws_region: str = Field(default="us-east-1",
                            validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_transcribe_endpoint: str | None = Field(
        default=None, description="Override wss://host:port of Transcribe streaming.")

    # AssemblyAI (ASSEMBLYAI_API_KEY as in AssemblyAI's docs; v3 `assemblyai`, v2 `assemblyai-v2`)
    assemblyai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("ASSEMBLYAI_API_KEY", "VOXQ_ASSEMBLYAI_API_KEY"),
        description="AssemblyAI API key: the raw Authorization header, or what mints temporary tokens.")
    assemblyai_token: SecretStr | None = Field(
        default=None, validation_alias=_env("VOXQ_ASSEMBLYAI_TOKEN"),
        description="A temporary streaming token minted elsewhere (single use: one connection).")
    assemblyai_temporary_tokens: bool = Field(
        default=False, description="Mint a single-use token per connection with the API key and "
                                   "connect with ?token= instead of sending the key.")
    assemblyai_url: str = Field(default="wss://streaming.assemblyai.com/v3/ws",
                                description="Universal Streaming (v3) WebSocket URL.")
    assemblyai_token_url: str = Field(default="https://streaming.assemblyai.com/v3/token",
                                      description="v3 temporary-token endpoint (GET).")
    assemblyai_v2_url: str = Field(default="wss://api.assemblyai.com/v2/realtime/ws",
                                   description="Legacy real-time (v2) WebSocket URL.")
    assemblyai_v2_token_url: str = Field(default="https://api.assemblyai.com/v2/realtime/token",
                                         description="v2 temporary-token endpoint (POST).")

    # Deepgram (DEEPGRAM_API_KEY / DEEPGRAM_ACCESS_TOKEN as Deepgram's SDKs read them)
    deepgram_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("DEEPGRAM_API_KEY", "VOXQ_DEEPGRAM_API_KEY"),
        description="Deepgram API key, sent as `Authorization: Token KEY`.")
    deepgram_access_token: SecretStr | None = Field(
        default=None, validation_alias=_env("DEEPGRAM_ACCESS_TOKEN", "VOXQ_DEEPGRAM_ACCESS_TOKEN"),
        description="Deepgram temporary JWT, sent as `Authorization: Bearer JWT` (wins over the key).")
    deepgram_url: str = Field(default="wss://api.deepgram.com/v1/listen",
                              description="Deepgram live streaming WebSocket URL.")

    # Alibaba DashScope (DASHSCOPE_API_KEY as the dashscope SDK reads it)
    dashscope_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("DASHSCOPE_API_KEY", "VOXQ_DASHSCOPE_API_KEY"),
        description="DashScope API key (sk-...), sent as `Authorization: Bearer KEY`.")
    dashscope_workspace: str | None = Field(
        default=None, validation_alias=_env("DASHSCOPE_WORKSPACE", "VOXQ_DASHSCOPE_WORKSPACE"),
        description="Workspace id sent as `X-DashScope-WorkSpace` (optional).")
    dashscope_url: str = Field(
        default="wss://dashscope.aliyuncs.com/api-ws/v1/inference",
        validation_alias=_env("VOXQ_DASHSCOPE_URL", "DASHSCOPE_WEBSOCKET_BASE_URL"),
        description="DashScope inference WebSocket URL (e.g. the -intl host).")

    # Volcengine / Doubao speech (console APP ID and Access Token, or a new-console API key)
    volcengine_app_id: str | None = Field(
        default=None, validation_alias=_env("VOLCENGINE_APP_ID", "VOXQ_VOLCENGINE_APP_ID"),
        description="Volcengine speech APP ID (`X-Api-App-Key`).")
    volcengine_access_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("VOLCENGINE_ACCESS_TOKEN", "VOXQ_VOLCENGINE_ACCESS_TOKEN"),
        description="Volcengine speech Access Token (`X-Api-Access-Key`).")
    volcengine_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("VOLCENGINE_API_KEY", "VOXQ_VOLCENGINE_API_KEY"),
        description="New-console API key (`X-Api-Key`), used when no APP ID/Access Token is set.")
    volcengine_asr_resource_id: str = Field(
        default="volc.bigasr.sauc.duration",
        validation_alias=_env("VOLCENGINE_ASR_RESOURCE_ID", "VOXQ_VOLCENGINE_ASR_RESOURCE_ID"),
        description="Streaming ASR resource id (`X-Api-Resource-Id`), e.g. volc.seedasr.sauc.duration.")
    volcengine_asr_url: str = Field(
        default="wss://openspeech.bytedance.com/api/v3/sauc",
        validation_alias=_env("VOXQ_VOLCENGINE_ASR_URL"),
        description="Base URL of the streaming ASR; the mode (/bigmodel_async, ...) is appended.")

    # Text-to-speech jobs (RQ queue `tts`, results at PREFIX:tts:{JOB})
    tts_queue: str = Field(default="tts", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                           description="RQ queue the API enqueues TTS jobs on (KEDA scales on it).")
    tts_default_vendor: str = Field(default="local", description="Vendor used when a request names none.")
    tts_result_ttl_seconds: int = Field(
        default=24 * 3600, ge=60, description="How long a TTS job's status and MP3 stay in Redis.")
    tts_max_text_chars: int = Field(default=20000, ge=1, le=1_000_000,
                                    description="Longest text one TTS job accepts (longer: 413).")
    tts_max_batch_items: int = Field(default=100, ge=1, le=10000,
                                     description="Most items one POST /v1/tts/batch accepts.")
    tts_cache_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=0,
                                       description="Lifetime of a cached MP3 (0: cache off).")
    tts_cache_max_entries: int = Field(default=1000, ge=0, description="Most MP3s the cache holds.")
    tts_cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0,
                                     description="Most MP3 bytes the cache holds in total.")
    tts_retries: int = Field(default=3, ge=0, le=20,
                             description="Retries of a TTS job after a transient vendor error.")
    tts_retry_backoff_seconds: list[int] = Field(
        default=[5, 30, 120], min_length=1,
        description="Waits before retry 1, 2, ... (JSON list of whole seconds; the last repeats).")
    tts_job_timeout_base_seconds: int = Field(
        default=60, ge=1, description="Job timeout: this many seconds plus the per-character part.")
    tts_job_timeout_per_char_seconds: float = Field(
        default=0.05, ge=0, description="Job timeout added per character of text.")
    tts_vendor_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait for one vendor call (connect, synthesize).")
    aws_polly_endpoint: str | None = Field(
        default=None, description="Override https://polly.REGION.amazonaws.com (e.g. an emulator).")
    aws_polly_engine: str = Field(default="neural", pattern=r"^(standard|neural|long-form|generative)$",
                                  description="Polly engine; every voice offered must support it.")
    dashscope_tts_model: str = Field(
        default="cosyvoice-v2", validation_alias=_env("VOXQ_DASHSCOPE_TTS_MODEL"),
        description="DashScope speech model (cosyvoice-v2 voices end in _v2).")
    volcengine_tts_url: str = Field(
        default="wss://openspeech.bytedance.com/api/v1/tts/ws_binary",
        validation_alias=_env("VOXQ_VOLCENGINE_TTS_URL"),
        description="Volcengine v1 binary TTS WebSocket URL.")
    volcengine_tts_cluster: str = Field(
        default="volcano_tts", validation_alias=_env("VOLCENGINE_TTS_CLUSTER", "VOXQ_VOLCENGINE_TTS_CLUSTER"),
        description="Volcengine v1 TTS cluster (volcano_tts; volcano_icl for cloned voices).")
    volcengine_tts_v3_url: str = Field(
        default="wss://openspeech.bytedance.com/api/v3/tts/bidirection",
        validation_alias=_env("VOXQ_VOLCENGINE_TTS_V3_URL"),
        description="Volcengine v3 bidirectional TTS WebSocket URL.")
    volcengine_tts_resource_id: str | None = Field(
        default=None,
        validation_alias=_env("VOLCENGINE_TTS_RESOURCE_ID", "VOXQ_VOLCENGINE_TTS_RESOURCE_ID"),
        description="v3 TTS `X-Api-Resource-Id`; unset: seed-tts-1.0 or -2.0 by the voice's family.")

    tts_metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Port of the TTS worker's /metrics (unset: off).")

    # voxq-ws (self-hosted recognizers speaking voxq's own protocol)
    voxqws_url: str | None = Field(
        default=None, validation_alias=_env("VOXQ_WS_URL"),
        description="ws(s):// URL of a voxq-ws recognition server.")
    voxqws_key: SecretStr | None = Field(
        default=None, validation_alias=_env("VOXQ_WS_KEY"),
        description="Bearer key sent to the voxq-ws server.")

    log_level: str = Field(default="INFO", description="Python logging level.")
    log_repeat_burst: int = Field(
        default=5, ge=1, description="Records alike (same logger, level and message) that pass "
                                     "per window; the rest are counted, not written.")
    log_repeat_window_seconds: float = Field(
        default=60.0, gt=0, description="The window of VOXQ_LOG_REPEAT_BURST.")

    @field_validator("redis_url", "rq_redis_url")
    @classmethod
    def _usable_redis_url(cls, url: str | None) -> str | None:
        """A Redis URL a client can be built from (checked here, so every command says what is
        wrong with it at start instead of failing at its first connection)."""
        if not url:
            return url
        from voxq.redis_conn import validate_redis_url  # redis_conn imports this module
        try:
            return validate_redis_url(url)
        except InvalidInput as e:
            raise ValueError(str(e)) from None

    @field_validator("rate_limit_scopes")
    @classmethod
    def _known_scopes(cls, rates: dict[str, float]) -> dict[str, float]:
        """Per-scope rates name known scopes and are not negative."""
        known = {"sessions:read", "sessions:write", "tts:read", "tts:write", "webhooks:manage",
                 "metrics:read", "admin"}
        for scope, rate in rates.items():
            if scope not in known:
                raise ValueError(f"unknown scope {scope[:40]!r}; use {', '.join(sorted(known))}")
            if rate < 0:
                raise ValueError(f"the rate of {scope} must not be negative")
        return rates

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        """A level name the logging module knows (DEBUG, INFO, WARNING, ERROR, CRITICAL)."""
        if not isinstance(logging.getLevelName(level.upper()), int):
            raise ValueError("use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level


def env_name(field: str) -> str:
    """The environment variable a Settings field (or the alias an error names) is read from."""
    info = Settings.model_fields.get(field)
    if info is None:  # errors name an aliased field by the alias it was read through
        return field.upper()
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else field
    if isinstance(alias, str):
        return alias
    return f"VOXQ_{field.upper()}"


def config_reason(e: ValidationError) -> str:
    """A settings ValidationError as one line naming each variable, never its value."""
    parts = []
    for err in e.errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = env_name(loc[0]) if loc else "configuration"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {msg}")
    return "; ".join(parts).replace("\n", " ") or "invalid configuration"


def load_settings() -> Settings:
    """Settings from the environment; ConfigError with a one-line reason if any is unusable."""
    try:
        return Settings()
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {config_reason(e)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once (ConfigError if unusable)."""
    return load_settings()
