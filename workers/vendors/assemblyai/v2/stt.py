"""`assemblyai-v2`: AssemblyAI's legacy real-time API (v2, deprecated) as hooks of the
WebSocket base (``docs/protocols/assemblyai.md``).

Per connection (one per channel): ``SessionBegins`` awaited at open (then the optional
``end_utterance_silence_threshold`` message), audio as base64 JSON messages of 100 ms (the
service takes 100-2000 ms), ``PartialTranscript`` / ``FinalTranscript`` mapped to partials and
finals, ``terminate_session`` at the end and the results end at ``SessionTerminated``. v2 has
no keep-alive message and closes a session that got no audio for a minute (4031), so during a
pause the base sends silence every ``keepalive_after`` seconds and removes it from result
times. Close codes 4000-4104 (and 1013) map to errors that say whether to retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal

from voxq.settings import Settings
from workers.vendors.assemblyai.settings import AssemblyAISettings
from workers.vendors.assemblyai.stt import AssemblyAIBase
from workers.vendors.assemblyai.v2 import protocol as p2
from workers.vendors.base import RecognizerConfig, Transcript, VendorRetryable
from workers.vendors.ws_stt import Frame, Link, SessionLimits

__all__ = ["AssemblyAIV2Recognizer"]


class AssemblyAIV2Recognizer(AssemblyAIBase):
    """AssemblyAI real-time v2: one connection per channel."""

    name: ClassVar[str] = "assemblyai-v2"
    generation: ClassVar[Literal["v3", "v2"]] = "v2"
    replay_burst_seconds: ClassVar[float] = 2.0
    #: the session length behind ``expires_at`` is not stated; 1 min without audio ends it
    limits: ClassVar[SessionLimits] = SessionLimits(max_silence=60.0)

    #: send audio as ``{"audio_data": base64}`` text frames (False: raw binary frames)
    json_audio: bool = True
    keepalive_after: float = 15.0  # the service closes after 60 s without audio
    min_message_seconds: ClassVar[float] = p2.MIN_CHUNK_S

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        opts = config.options
        assert isinstance(opts, p2.AssemblyAIV2Options)
        self.options = opts
        self.keepalive_seconds = p2.MIN_CHUNK_S
        self.session_ids: list[str] = []

    def base_url(self) -> str:
        """The v2 endpoint."""
        return AssemblyAISettings.of(self.settings).v2_url

    def token_url(self) -> str:
        """The v2 token endpoint."""
        return AssemblyAISettings.of(self.settings).v2_token_url

    def params(self, token: str | None) -> list[tuple[str, str]]:
        """The v2 query."""
        return p2.query_params(self.config.rate, self.options, token)

    async def greet(self, link: Link) -> None:
        """Wait for SessionBegins, then set the end-of-utterance silence if asked to."""
        first = await self.first_message(link, p2.decode_server, p2.ErrorMessage)
        if not isinstance(first, p2.SessionBegins):
            raise VendorRetryable(f"expected SessionBegins, got {type(first).__name__}",
                                  vendor=self.name)
        self.session_ids.append(first.session_id)
        if self.options.end_utterance_silence_threshold is not None:
            await self.transmit(link, p2.silence_threshold(
                self.options.end_utterance_silence_threshold))

    def encode_audio(self, link: Link, pcm: bytes) -> Frame:
        """Base64 JSON (or binary)."""
        return p2.encode_audio(pcm) if self.json_audio else pcm

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """``terminate_session``."""
        return (p2.TERMINATE,)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Utterances to Transcripts; SessionTerminated ends the connection."""
        try:
            msg = p2.decode_server(frame)
        except ValueError as e:
            raise VendorRetryable(f"malformed message from the service: {e}",
                                  vendor=self.name) from None
        if isinstance(msg, p2.Utterance):
            t = p2.to_transcript(msg, link.channel or 0)
            return () if t is None else (t,)
        if isinstance(msg, p2.SessionTerminated):
            if not link.ended:
                raise VendorRetryable("the service terminated the session before the end of the "
                                      "audio", vendor=self.name, code="SessionTerminated")
            link.done = True
        elif isinstance(msg, p2.ErrorMessage):
            link.notes["error"] = msg.text
        return ()

    async def force_end_utterance(self) -> None:
        """End the current utterance on every channel now, buffered audio first."""
        await self.flush_then(p2.FORCE_END_UTTERANCE)
