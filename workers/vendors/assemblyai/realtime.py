"""`assemblyai-v2`: AssemblyAI's legacy real-time API (v2, deprecated) over its WebSocket.

Per connection (one per channel): ``SessionBegins`` awaited at open (then the optional
``end_utterance_silence_threshold`` message), audio as base64 JSON messages of 100 ms (the
service takes 100-2000 ms), ``PartialTranscript`` / ``FinalTranscript`` mapped to partials and
finals, ``terminate_session`` at the end and the results end at ``SessionTerminated``. v2 has
no keep-alive message and closes a session that got no audio for a minute (4031), so during a
pause the adapter sends 100 ms of silence every ``keepalive_after`` seconds and removes it from
result times. Close codes 4000-4104 (and 1013) map to errors that say whether to retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from voxq.settings import Settings
from workers.vendors.assemblyai import protocol_v2 as p2
from workers.vendors.assemblyai.session import AssemblyAIRecognizerBase, Connection
from workers.vendors.base import RecognizerConfig, VendorOptionError, VendorRetryable

__all__ = ["AssemblyAIV2Recognizer"]


class AssemblyAIV2Recognizer(AssemblyAIRecognizerBase):
    """AssemblyAI real-time v2: one connection per channel."""

    name: ClassVar[str] = "assemblyai-v2"
    options_model: ClassVar[type[BaseModel]] = p2.AssemblyAIV2Options
    generation: ClassVar[Literal["v3", "v2"]] = "v2"
    min_chunk_seconds: ClassVar[float] = p2.MIN_CHUNK_S
    max_chunk_seconds: ClassVar[float] = p2.MAX_CHUNK_S
    replay_burst_seconds: ClassVar[float] = 2.0

    #: send audio as ``{"audio_data": base64}`` text frames (False: raw binary frames)
    json_audio: bool = True
    keepalive_after: float = 15.0  # the service closes after 60 s without audio

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        opts = config.options
        assert isinstance(opts, p2.AssemblyAIV2Options)
        self.options = opts
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
        return self.settings.assemblyai_v2_url

    def _token_url(self) -> str:
        return self.settings.assemblyai_v2_token_url

    def _params(self, token: str | None) -> list[tuple[str, str]]:
        return p2.query_params(self.config.rate, self.options, token)

    async def _opened(self, conn: Connection) -> None:
        """Wait for SessionBegins, then set the end-of-utterance silence if asked to."""
        first = await self._first_message(conn, p2.decode_server, p2.ErrorMessage)
        if not isinstance(first, p2.SessionBegins):
            raise VendorRetryable(f"expected SessionBegins, got {type(first).__name__}",
                                  vendor=self.name)
        self.session_ids.append(first.session_id)
        if self.options.end_utterance_silence_threshold is not None:
            await self._transmit(conn, p2.silence_threshold(
                self.options.end_utterance_silence_threshold))

    def _audio_frame(self, pcm: bytes) -> bytes | str:
        return p2.encode_audio(pcm) if self.json_audio else pcm

    def _end_frame(self) -> str:
        return p2.TERMINATE

    def _handle(self, conn: Connection, frame: str | bytes) -> None:
        msg = p2.decode_server(frame)
        if isinstance(msg, p2.Utterance):
            t = p2.to_transcript(msg, conn.channel, conn.to_seconds)
            if t is not None:
                self._queue.put_nowait(t)
        elif isinstance(msg, p2.SessionTerminated):
            if not conn.ended:
                raise VendorRetryable("the service terminated the session before the end of the "
                                      "audio", vendor=self.name, code="SessionTerminated")
            self._ended(conn)
        elif isinstance(msg, p2.ErrorMessage):
            conn.error_text = msg.text

    async def _idle(self, conn: Connection) -> None:
        """Send the buffered tail padded with silence to one minimal message (audio resets the
        service's idle timer; nothing else does)."""
        tail = bytes(conn.buf[: 2 * self._chunk_frames])
        del conn.buf[: len(tail)]
        await self._send_audio(conn, tail, max(0, self._min_frames - len(tail) // 2))

    async def force_end_utterance(self) -> None:
        """End the current utterance on every channel now, buffered audio first."""
        async with self._lock:
            for conn in self._live():
                if not conn.ended:
                    await self._flush(conn, pad=False)
                    await self._transmit(conn, p2.FORCE_END_UTTERANCE)
