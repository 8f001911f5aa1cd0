"""The client's exception tree: every gRPC error a client method sees is re-raised as one of these.

::

    VoxwireError                    .code (gRPC status name), .details, .retryable, .retry_after_s
    ├── InvalidArgumentError        INVALID_ARGUMENT     bad audio, config or text
    ├── NotFoundError               NOT_FOUND            unknown voice, model or stream
    ├── FailedPreconditionError     FAILED_PRECONDITION  valid request the server cannot serve now
    ├── OutOfRangeError             OUT_OF_RANGE         a size or length limit: clip too long or
    │                                                    too large (stream it instead)
    ├── UnimplementedError          UNIMPLEMENTED        a capability this server does not have
    ├── PermissionDeniedError       PERMISSION_DENIED, UNAUTHENTICATED
    ├── RequestCancelledError       CANCELLED
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED   over capacity            (retryable)
    ├── UnavailableError            UNAVAILABLE          unreachable or draining  (retryable)
    ├── DeadlineExceededError       DEADLINE_EXCEEDED                             (retryable)
    ├── AbortedError                ABORTED              e.g. a stream abandoned  (retryable)
    └── ServerError                 INTERNAL, UNKNOWN, DATA_LOSS and any other code

RESOURCE_EXHAUSTED is for capacity only (retryable, with a delay); gRPC's "message larger than max"
refusal, which uses the same code, becomes :class:`OutOfRangeError`.

``retryable`` is a class attribute: True where sending the same request again later may succeed.
``retry_after_s`` is the delay the server asked for (a ``google.rpc.RetryInfo`` in the
``grpc-status-details-bin`` trailer, read with googleapis-common-protos), or None.

:func:`from_rpc_error` is the one place that maps a ``grpc.RpcError`` (sync or ``grpc.aio``) to
this tree; client methods raise its result ``from`` the original error. For ``grpc.aio`` streams a
private helper here also recovers the server's status where grpc/grpc#36066 replaces it with
INTERNAL "Internal error from Core".
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "ServerError",
    "UnavailableError",
    "UnimplementedError",
    "VoxwireError",
    "from_rpc_error",
]

T = TypeVar("T")


class VoxwireError(Exception):
    """Base class of every error a voxwire client method raises for a failed RPC.

    Attributes:
        code: the gRPC status name, e.g. ``"INVALID_ARGUMENT"``.
        details: the server's message (may be empty).
        retry_after_s: how long the server asked the client to wait before retrying, or None.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, code: str, details: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return f"{self.code}: {self.details}" if self.details else self.code


class InvalidArgumentError(VoxwireError):
    """The request was malformed: bad audio, config or text (INVALID_ARGUMENT)."""


class NotFoundError(VoxwireError):
    """An unknown voice, model or stream was named (NOT_FOUND)."""


class FailedPreconditionError(VoxwireError):
    """The request is valid but the server cannot serve it in its current state (FAILED_PRECONDITION)."""


class OutOfRangeError(VoxwireError):
    """A size or length limit was reached, e.g. a clip too long or too large for Recognize (OUT_OF_RANGE).

    Also raised for gRPC's own "message larger than max" refusal, which arrives as
    RESOURCE_EXHAUSTED but is not a capacity problem: the same request can never succeed."""


class UnimplementedError(VoxwireError):
    """The server does not implement the method or capability asked for (UNIMPLEMENTED)."""


class PermissionDeniedError(VoxwireError):
    """The caller is not allowed to do this (PERMISSION_DENIED or UNAUTHENTICATED)."""


class RequestCancelledError(VoxwireError):
    """The RPC was cancelled, usually by the server shutting it down (CANCELLED)."""


class ResourceExhaustedError(VoxwireError):
    """The server is over capacity; retry later, after ``retry_after_s`` if set (RESOURCE_EXHAUSTED)."""

    retryable = True


class UnavailableError(VoxwireError):
    """The server cannot be reached, is starting or is draining (UNAVAILABLE)."""

    retryable = True


class DeadlineExceededError(VoxwireError):
    """The call's deadline (``timeout_s``) passed before it completed (DEADLINE_EXCEEDED)."""

    retryable = True


class AbortedError(VoxwireError):
    """The server aborted the call, e.g. a stream closed without end of audio (ABORTED)."""

    retryable = True


class ServerError(VoxwireError):
    """The server failed (INTERNAL, UNKNOWN, DATA_LOSS or a code this client does not know)."""


_BY_CODE: dict[str, type[VoxwireError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "NOT_FOUND": NotFoundError,
    "FAILED_PRECONDITION": FailedPreconditionError,
    "OUT_OF_RANGE": OutOfRangeError,
    "UNIMPLEMENTED": UnimplementedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": PermissionDeniedError,
    "CANCELLED": RequestCancelledError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
    "ABORTED": AbortedError,
}


# What gRPC says when a message is over a channel's or server's size limit ("Received message
# larger than max (N vs. M)", "Sent message larger than max ...").
_MESSAGE_TOO_LARGE = "message larger than max"


def from_rpc_error(exc: grpc.RpcError) -> VoxwireError:
    """Returns the :class:`VoxwireError` for a ``grpc.RpcError`` or ``grpc.aio.AioRpcError``."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    status = code_fn() if callable(code_fn) else None
    code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    details = details_fn() if callable(details_fn) else None
    text = details if isinstance(details, str) else ""
    if code == "RESOURCE_EXHAUSTED" and _MESSAGE_TOO_LARGE in text:
        # gRPC's own size check (client or server side), not a capacity limit: sending the same
        # message again can never succeed.
        return OutOfRangeError(
            "OUT_OF_RANGE",
            f"RESOURCE_EXHAUSTED from gRPC's message size limit ({text}): a request this large must "
            "be streamed (StreamingRecognize); a reply this large needs a larger "
            "grpc.max_receive_message_length in channel_options",
        )
    cls = _BY_CODE.get(code, ServerError)
    return cls(code, text, retry_after_s=_retry_after_s(exc))


# grpc/grpc#36066: a write that races the server ending a stream makes grpc.aio replace the status
# the server sent (e.g. INVALID_ARGUMENT, RESOURCE_EXHAUSTED) with this placeholder.
_CORE_WRITE_FAILURE = "Internal error from Core"


class _AioStreamStatus:
    """Recovers the server's status of a stream when a racing write hid it (grpc/grpc#36066).

    Registered as the call's done callback, it keeps the first status grpc.aio sets, before the
    placeholder can overwrite it; when the placeholder came first, the server's status replaces
    it moments later, so :meth:`error` waits a little for that.
    """

    def __init__(self) -> None:
        self._first: grpc.aio.AioRpcError | None = None

    def __call__(self, call: grpc.aio.Call) -> None:
        # Once a call is done its status accessors finish without suspending: run them in place.
        code, details = _result_now(call.code()), _result_now(call.details())
        if code is not None and code != grpc.StatusCode.OK and details != _CORE_WRITE_FAILURE:
            trailing = _result_now(call.trailing_metadata()) or grpc.aio.Metadata()
            self._first = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)

    async def error(self, call: grpc.aio.Call, exc: grpc.RpcError) -> VoxwireError:
        error = from_rpc_error(exc)
        if error.code != "INTERNAL" or error.details != _CORE_WRITE_FAILURE:
            return error
        if self._first is not None:
            return from_rpc_error(self._first)
        for _ in range(50):
            await asyncio.sleep(0.01)
            code, details = await call.code(), await call.details()
            if code != grpc.StatusCode.INTERNAL or details != _CORE_WRITE_FAILURE:
                trailing = await call.trailing_metadata()
                return from_rpc_error(
                    grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, None)
                )
        return error


def _result_now(coroutine: Coroutine[Any, Any, T]) -> T | None:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    except Exception:
        return None
    coroutine.close()
    return None


_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _retry_after_s(exc: grpc.RpcError) -> float | None:
    trailing_fn = getattr(exc, "trailing_metadata", None)
    if not callable(trailing_fn):
        return None
    for key, value in trailing_fn() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return _retry_delay_from_status(value)
    return None


def _retry_delay_from_status(blob: bytes) -> float | None:
    """The RetryInfo delay inside a serialized google.rpc.Status, or None."""
    try:
        status = status_pb2.Status.FromString(blob)
    except DecodeError:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None
