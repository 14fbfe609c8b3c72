"""`assemblyai`: AssemblyAI Universal Streaming (v3) as hooks of the WebSocket base
(``docs/protocols/assemblyai.md``, "A5. v3 session limits").

AssemblyAI takes mono audio only, so a two-channel session runs one connection per channel
(the base splits the channels and tags each connection's results). Audio goes out as binary
pcm_s16le messages of 100 ms (the service takes 50-1000 ms; a shorter last message is padded
with silence, removed from result times). ``Begin`` is awaited at open, ``Turn``s are mapped by
``protocol.TurnAssembler`` (partials while a turn grows, one final per turn, formatted when
``format_turns``), ``Terminate`` ends the audio and the results end at ``Termination``. During a
pause a ``KeepAlive`` goes out every ``keepalive_after`` seconds (it resets the
``inactivity_timeout`` the session may have set). ``force_endpoint()`` ends the current turn now.
An ``Error`` frame's text plus the close code (2026 numbering and the older one) become the
session's error: retryable only if a new session can succeed.

Secrets (API key, tokens) are SecretStr in Settings; they go out only in the Authorization
header or the ``token`` query parameter, and are redacted from the websockets library's debug
log lines and from every error message. The v2 adapter (``v2/stt.py``) shares `AssemblyAIBase`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from voxq.settings import Settings
from workers.vendors.assemblyai import protocol as p3
from workers.vendors.assemblyai.codes import TOKEN_QUERY, close_error, http_error
from workers.vendors.assemblyai.protocol import build_url
from workers.vendors.assemblyai.settings import AssemblyAISettings
from workers.vendors.assemblyai.tokens import mint_token
from workers.vendors.base import (
    RecognizerConfig,
    Transcript,
    VendorAuthError,
    VendorError,
    VendorRejected,
    VendorRetryable,
)
from workers.vendors.ws_stt import Endpoint, Frame, Link, SessionLimits, WebSocketRecognizer, where_of

log = logging.getLogger(__name__)

__all__ = ["AssemblyAIBase", "AssemblyAIRecognizer"]


class AssemblyAIBase(WebSocketRecognizer):
    """What both AssemblyAI generations share: auth (key, token or minted tokens), the URL,
    the message bounds and the meaning of closes."""

    generation: ClassVar[Literal["v3", "v2"]]
    multichannel: ClassVar[bool] = False
    redact_headers: ClassVar[tuple[str, ...]] = ("authorization", "sec-websocket-protocol")
    redact_patterns = (TOKEN_QUERY,)
    #: the service wants audio at about real time; a short burst is tolerated
    max_replay_speed: ClassVar[float] = 1.0
    replay_burst_seconds: ClassVar[float] = 1.0

    chunk_seconds: float | None = 0.1
    min_send_seconds: float = 0.1  # whole messages while audio flows
    keepalive_after: float = 5.0

    def base_url(self) -> str:
        """The WebSocket URL without query."""
        raise NotImplementedError

    def token_url(self) -> str:
        """Where temporary tokens are minted."""
        raise NotImplementedError

    def params(self, token: str | None) -> list[tuple[str, str]]:
        """The connection's query parameters."""
        raise NotImplementedError

    async def endpoint(self, channel: int | None) -> Endpoint:
        """The URL with its query; the key as Authorization, or a token (a fresh one each
        connection when minting)."""
        s = AssemblyAISettings.of(self.settings)
        parts = urlsplit(self.base_url())
        where = where_of(self.base_url())
        if parts.scheme not in ("ws", "wss"):
            raise VendorRejected(f"invalid AssemblyAI URL {where!r}: needs ws:// or wss://",
                                 vendor=self.name)
        if self.config.channels > 1 and s.token is not None:
            raise VendorRejected("VOXQ_ASSEMBLYAI_TOKEN is a single-use token but a two-channel "
                                 "session opens one connection per channel: set "
                                 "ASSEMBLYAI_API_KEY instead", vendor=self.name)
        key = s.api_key.get_secret_value() if s.api_key else ""
        token = s.token.get_secret_value() if s.token else ""
        self._secrets = tuple(x for x in (*self._secrets, key, token) if x)
        headers: dict[str, str] = {}
        if not token:
            if not key:
                raise VendorAuthError("AssemblyAI credentials are missing: set ASSEMBLYAI_API_KEY "
                                      "(or VOXQ_ASSEMBLYAI_TOKEN) in the worker's environment",
                                      vendor=self.name)
            if s.temporary_tokens:
                token = await mint_token(self.token_url(), key, self.generation, self.name,
                                         timeout=self.open_timeout)
                self._secrets += (token,)
            else:
                headers["Authorization"] = key
        return Endpoint(url=build_url(self.base_url(), self.params(token or None)), where=where,
                        headers=headers)

    async def first_message(self, link: Link, decode: Any, error_type: type) -> Any:
        """The first message that is not an error frame, or the error the service closed with."""
        while True:
            try:
                msg = decode(await self.receive(link, self.open_timeout))
            except ValueError as e:  # the generation's ProtocolError
                raise VendorRetryable(f"malformed first message from the service: {e}",
                                      vendor=self.name) from None
            if isinstance(msg, error_type):
                link.notes["error"] = str(getattr(msg, "text", ""))
                continue
            return msg

    def closed(self, link: Link, code: int | None, reason: str) -> VendorError | None:
        """A 1000 after the end without its confirmation, or the vendor's close codes."""
        if link.ended and code == 1000:
            return VendorRetryable("the service closed the session without confirming its end",
                                   vendor=self.name, code=1000)
        return close_error(self.name, code, reason, link.notes.get("error"), self._secrets)

    def handshake_error(self, status: int, headers: Mapping[str, str], body: bytes) -> VendorError:
        """The JSON ``error`` of the refusal."""
        return http_error(self.name, status, body, self._secrets)

    async def flush_then(self, frame: Frame) -> None:
        """Send whole messages of buffered audio, then ``frame``, on every open connection."""
        async with self._lock:
            gen = self._live()
            await self._pump(everything=False)
            for link in gen.links:
                if not link.ended:
                    await self.transmit(link, frame)


class AssemblyAIRecognizer(AssemblyAIBase):
    """AssemblyAI Universal Streaming v3: one connection per channel."""

    name: ClassVar[str] = "assemblyai"
    generation: ClassVar[Literal["v3", "v2"]] = "v3"
    #: 3 h per session (or the token's limit); inactivity only with ``inactivity_timeout``
    limits: ClassVar[SessionLimits] = SessionLimits(max_session=10_800.0)
    min_message_seconds: ClassVar[float] = p3.MIN_CHUNK_S

    def __init__(self, config: RecognizerConfig, settings: Settings):
        super().__init__(config, settings)
        opts = config.options
        assert isinstance(opts, p3.AssemblyAIOptions)
        self.options = opts
        if opts.inactivity_timeout is not None:  # keep well inside the session's own timeout
            self.keepalive_after = min(self.keepalive_after, opts.inactivity_timeout / 2)
        self.session_ids: list[str] = []

    def base_url(self) -> str:
        """The v3 endpoint."""
        return AssemblyAISettings.of(self.settings).url

    def token_url(self) -> str:
        """The v3 token endpoint."""
        return AssemblyAISettings.of(self.settings).token_url

    def params(self, token: str | None) -> list[tuple[str, str]]:
        """The v3 query."""
        return p3.query_params(self.config.language, self.config.rate, self.options, token)

    async def greet(self, link: Link) -> None:
        """Wait for Begin; warn if the service runs another model than asked (a typo'd option)."""
        first = await self.first_message(link, p3.decode_server, p3.ErrorMessage)
        if not isinstance(first, p3.Begin):
            raise VendorRetryable(f"expected Begin, got {type(first).__name__}", vendor=self.name)
        wanted = p3.speech_model_for(self.config.language, self.options)
        if first.model is not None and first.model != wanted:
            log.warning("session %s: AssemblyAI runs model %s, not %s", self.config.session_id,
                        first.model, wanted)
        self.session_ids.append(first.id)
        link.notes["turns"] = p3.TurnAssembler(link.channel or 0, self.options.format_turns)

    def keepalive(self, link: Link) -> Frame | None:
        """``KeepAlive``."""
        return p3.KEEPALIVE

    def end_frames(self, link: Link) -> Sequence[Frame]:
        """``Terminate``."""
        return (p3.TERMINATE,)

    def decode(self, link: Link, frame: Frame) -> Iterable[Transcript]:
        """Turns through the assembler; Termination ends the connection if it heard the audio."""
        try:
            msg = p3.decode_server(frame)
        except ValueError as e:
            raise VendorRetryable(f"malformed message from the service: {e}",
                                  vendor=self.name) from None
        assembler: p3.TurnAssembler = link.notes["turns"]
        if isinstance(msg, p3.Turn):
            return assembler.feed(msg)
        if isinstance(msg, p3.Termination):
            out = assembler.flush()
            if not link.ended:
                raise VendorRetryable("the service terminated the session before the end of the "
                                      "audio", vendor=self.name, code="Termination")
            sent = link.timeline.frames / link.timeline.rate
            if msg.audio_seconds is not None and msg.audio_seconds + 1.0 < sent:
                # it ended on its own while the end of the audio was in flight
                raise VendorRetryable(f"the service terminated the session after "
                                      f"{msg.audio_seconds:g} s of the {sent:.1f} s of audio sent",
                                      vendor=self.name, code="Termination")
            link.done = True
            return out
        if isinstance(msg, p3.ErrorMessage):
            link.notes["error"] = msg.text
        elif isinstance(msg, p3.WarningMessage):
            log.warning("session %s: AssemblyAI warning %s: %s", self.config.session_id, msg.code,
                        msg.text[:200])
        return ()

    async def force_endpoint(self) -> None:
        """End the current turn on every channel now (``ForceEndpoint``), buffered audio first."""
        await self.flush_then(p3.FORCE_ENDPOINT)

    async def update_configuration(self, **fields: Any) -> None:
        """Change turn-detection settings mid-session (``UpdateConfiguration``)."""
        frame = p3.update_configuration(**fields)
        async with self._lock:
            for link in self._live().links:
                if not link.ended:
                    await self.transmit(link, frame)
