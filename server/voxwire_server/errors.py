"""Domain exceptions. They carry no grpc import: transport/status.py maps them to status codes.

VoxwireError
├── InvalidInput            bad audio, bad config, bad text            → INVALID_ARGUMENT
├── Unauthenticated         no, unknown or malformed credentials       → UNAUTHENTICATED
├── PermissionDenied        valid credentials, not allowed this        → PERMISSION_DENIED
├── NotFound                unknown voice, model or stream             → NOT_FOUND
├── PreconditionFailed      valid request the server cannot serve now  → FAILED_PRECONDITION
├── StreamAbandoned         request stream closed without end_of_audio → ABORTED
├── LimitExceeded           stream limits                              → OUT_OF_RANGE
├── OverCapacity            too many streams / queue full              → RESOURCE_EXHAUSTED
├── Unavailable             warming up, draining, backend down         → UNAVAILABLE
└── NotImplementedCapability  a capability not built yet               → UNIMPLEMENTED
Anything else is INTERNAL with a generic message.
"""

from __future__ import annotations

from typing import ClassVar

# Caller text quoted in an error message is cut to this many characters: an error must not echo a
# 20 KB field back into a trailer (where it could even exceed the metadata limit).
QUOTE_CHARS = 60


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """repr() of caller text for an error message, cut to `limit` characters with a marker."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


class VoxwireError(Exception):
    """Base class; the message is safe to send to the client, unless the class sets client_message."""

    # For errors whose message names internals (a backend's host and port): the client gets this
    # generic text with the request id instead, and the message goes to the server log.
    client_message: ClassVar[str | None] = None


class InvalidInput(VoxwireError):
    pass


class Unauthenticated(VoxwireError):
    pass


class PermissionDenied(VoxwireError):
    pass


class NotFound(VoxwireError):
    pass


class PreconditionFailed(VoxwireError):
    pass


class StreamAbandoned(VoxwireError):
    pass


class LimitExceeded(VoxwireError):
    pass


class OverCapacity(VoxwireError):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(VoxwireError):
    pass


class NotImplementedCapability(VoxwireError):
    def __init__(self, capability: str) -> None:
        super().__init__(f"{capability} is not implemented in this server version")
        self.capability = capability


class ConfigError(VoxwireError):
    """Invalid server configuration, found at start-up."""
