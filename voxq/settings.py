"""Settings read once from the environment; secrets are SecretStr so they never print."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # API
    api_host: str = Field(default="127.0.0.1", description="Address the API binds.")
    api_port: int = Field(default=8000, ge=0, le=65535, description="Port the API binds.")
    api_key: SecretStr | None = Field(
        default=None, description="When set, the API requires `Authorization: Bearer KEY`.")

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
