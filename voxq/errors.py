"""The few named errors voxq raises; every user-facing failure is one of these.

The tree (core classes here; the worker's vendor errors and a few local ones hang from it)::

    VoxqError
    ├── InvalidInput (ValueError)        the caller's mistake: a 4xx, a CLI message, nothing changed
    │   ├── InvalidSessionId
    │   ├── InvalidAudio
    │   ├── VendorOptionError            an option, language, rate or channel count the
    │   │                                recognizer refuses (voxq.stt_offers)
    │   └── UnknownVendor                a vendor name nobody registered
    ├── MalformedRecord (ValueError)     a record stored in Redis that cannot be decoded: a
    │                                    faulty or hostile writer's, never this caller's (the API
    │                                    answers 409 with the reason; a worker fails the session)
    ├── ConfigError                      the process's own configuration
    ├── UnknownSession (LookupError)     404
    ├── SessionExists                    409
    ├── RedisUnavailable (ConnectionError)
    │   └── PublishFailed                producer.publisher
    ├── SessionFailed                    the session ended while its producer still published
    └── VendorError                      workers.vendors.base; ``retryable`` says if a new
        ├── VendorRetryable              attempt can succeed (a retry, then failover)
        └── VendorRejected               the vendor refused the request: failover at once
            └── VendorAuthError          credentials missing, wrong or expired

InvalidInput and MalformedRecord are siblings on purpose: one is the caller's mistake (4xx,
nothing changed), the other is data already stored that nobody can use. A path that reads
stored records catches MalformedRecord by name; a decoder that validates a stored record with
the same rules as a new one (SessionMeta.from_hash) turns the InvalidInput into MalformedRecord.
"""

from __future__ import annotations


class VoxqError(Exception):
    """Base of every error voxq raises on purpose."""


class InvalidInput(VoxqError, ValueError):
    """Input that voxq refuses: a bad session id, option, rate or chunk. Changes nothing."""


class InvalidSessionId(InvalidInput):
    """A session id outside `[A-Za-z0-9._-]{1,128}`."""


class InvalidAudio(InvalidInput):
    """Audio that cannot be read or does not match its declared format."""


class VendorOptionError(InvalidInput):
    """A per-session option the vendor does not accept; raised when the session is created."""


class UnknownVendor(InvalidInput):
    """A vendor name that is not registered."""


class MalformedRecord(VoxqError, ValueError):
    """A record stored in Redis (session meta, transcript, status or lifecycle entry, audio
    chunk, key record) that cannot be decoded: written by a faulty or hostile writer, never by
    the client of the current request, so it is never answered as the caller's mistake."""


class ConfigError(VoxqError):
    """The process's configuration (environment variables, REDIS_URL) is unusable."""


class UnknownSession(VoxqError, LookupError):
    """A session id that has no meta hash in Redis."""


class SessionExists(VoxqError):
    """A producer tried to create a session id that is already in use."""


class RedisUnavailable(VoxqError, ConnectionError):
    """Redis could not be reached (or an embedded one could not be started)."""


class SessionFailed(VoxqError):
    """The session ended (failed or abandoned) while its producer was still publishing it."""
