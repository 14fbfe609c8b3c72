"""`assemblyai`: AssemblyAI Universal Streaming (v3) over its WebSocket API.

Per connection (one per channel): binary pcm_s16le messages of 100 ms (the service takes
50-1000 ms), ``Begin`` awaited at open, ``Turn``s mapped by
``protocol_v3.TurnAssembler`` (partials while a turn grows, one final per turn, formatted when
``format_turns``), ``Terminate`` at the end and the results end at ``Termination``. During a
pause in the audio a ``KeepAlive`` message is sent every ``keepalive_after`` seconds (it
resets the ``inactivity_timeout`` the session may have set). ``force_endpoint()`` ends the
current turn now. An ``Error`` frame's text plus the close code (2026 numbering and the
older one) become the session's error: retryable only if a new session can succeed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from voxq.settings import Settings
from workers.vendors.assemblyai import protocol_v3 as p3
from workers.vendors.assemblyai.session import AssemblyAIRecognizerBase, Connection
from workers.vendors.base import RecognizerConfig, VendorOptionError, VendorRetryable

log = logging.getLogger(__name__)

__all__ = ["AssemblyAIRecognizer"]


class AssemblyAIRecognizer(AssemblyAIRecognizerBase):
    """AssemblyAI Universal Streaming v3: one connection per channel."""

    name: ClassVar[str] = "assemblyai"
    options_model: ClassVar[type[BaseModel]] = p3.AssemblyAIOptions
    generation: ClassVar[Literal["v3", "v2"]] = "v3"
    min_chunk_seconds: ClassVar[float] = p3.MIN_CHUNK_S
    max_chunk_seconds: ClassVar[float] = p3.MAX_CHUNK_S

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        opts = config.options
        assert isinstance(opts, p3.AssemblyAIOptions)
        self.options = opts
        if opts.inactivity_timeout is not None:  # keep well inside the session's own timeout
            self.keepalive_after = min(self.keepalive_after, opts.inactivity_timeout / 2)
        self.session_ids: list[str] = []

    @classmethod
    def validate_options(cls, language: str, rate: int, channels: int,
                         options: Mapping[str, Any]) -> BaseModel:
        """Check options, rate and channels at session creation."""
        parsed = super().validate_options(language, rate, channels, options)
        if channels not in (1, 2):
            raise VendorOptionError(f"{cls.name}: {channels} channels; 1 or 2 are supported")
        return parsed

    def _base_url(self) -> str:
        return self.settings.assemblyai_url

    def _token_url(self) -> str:
        return self.settings.assemblyai_token_url

    def _params(self, token: str | None) -> list[tuple[str, str]]:
        return p3.query_params(self.config.language, self.config.rate, self.options, token)

    async def _opened(self, conn: Connection) -> None:
        """Wait for Begin; warn if the service runs another model than asked (a typo'd option)."""
        first = await self._first_message(conn, p3.decode_server, p3.ErrorMessage)
        if not isinstance(first, p3.Begin):
            raise VendorRetryable(f"expected Begin, got {type(first).__name__}", vendor=self.name)
        wanted = p3.speech_model_for(self.config.language, self.options)
        if first.model is not None and first.model != wanted:
            log.warning("session %s: AssemblyAI runs model %s, not %s", self.config.session_id,
                        first.model, wanted)
        self.session_ids.append(first.id)
        conn.state = p3.TurnAssembler(conn.channel, self.options.format_turns, conn.to_seconds)

    def _audio_frame(self, pcm: bytes) -> bytes:
        return pcm

    def _end_frame(self) -> str:
        return p3.TERMINATE

    def _handle(self, conn: Connection, frame: str | bytes) -> None:
        msg = p3.decode_server(frame)
        assembler: p3.TurnAssembler = conn.state
        if isinstance(msg, p3.Turn):
            for t in assembler.feed(msg):
                self._queue.put_nowait(t)
        elif isinstance(msg, p3.Termination):
            for t in assembler.flush():
                self._queue.put_nowait(t)
            if not conn.ended:
                raise VendorRetryable("the service terminated the session before the end of the "
                                      "audio", vendor=self.name, code="Termination")
            sent = conn.frames / conn.rate
            if msg.audio_seconds is not None and msg.audio_seconds + 1.0 < sent:
                # it ended on its own while the end of the audio was in flight
                raise VendorRetryable(f"the service terminated the session after "
                                      f"{msg.audio_seconds:g} s of the {sent:.1f} s of audio sent",
                                      vendor=self.name, code="Termination")
            self._ended(conn)
        elif isinstance(msg, p3.ErrorMessage):
            conn.error_text = msg.text
        elif isinstance(msg, p3.WarningMessage):
            log.warning("session %s: AssemblyAI warning %s: %s", self.config.session_id, msg.code,
                        msg.text[:200])

    async def _idle(self, conn: Connection) -> None:
        """Send a buffered tail if it is long enough, else a KeepAlive message."""
        if len(conn.buf) // 2 >= self._min_frames:
            await self._flush(conn, pad=False)
        else:
            await self._transmit(conn, p3.KEEPALIVE)

    async def force_endpoint(self) -> None:
        """End the current turn on every channel now (``ForceEndpoint``), buffered audio first."""
        async with self._lock:
            for conn in self._live():
                if not conn.ended:
                    await self._flush(conn, pad=False)
                    await self._transmit(conn, p3.FORCE_ENDPOINT)

    async def update_configuration(self, **fields: Any) -> None:
        """Change turn-detection settings mid-session (``UpdateConfiguration``)."""
        frame = p3.update_configuration(**fields)
        async with self._lock:
            for conn in self._live():
                if not conn.ended:
                    await self._transmit(conn, frame)
