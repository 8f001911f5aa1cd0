"""The one table from domain exceptions to gRPC status codes."""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from voxwire_server import errors, logcontext

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[errors.VoxwireError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StreamAbandoned, grpc.StatusCode.ABORTED),
    (errors.LimitExceeded, grpc.StatusCode.OUT_OF_RANGE),
    (errors.OverCapacity, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NotImplementedCapability, grpc.StatusCode.UNIMPLEMENTED),
)


def status_for(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, errors.VoxwireError):
        for kind, code in _CODES:
            if isinstance(exc, kind):
                if exc.client_message is not None:
                    log.warning("request %s failed: %s", request_id, exc)
                    return code, f"{exc.client_message} (request id {request_id})"
                return code, str(exc)
    log.error("internal error in request %s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"


def _first_domain_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The exception to report from a TaskGroup failure: a domain error when there is one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, errors.VoxwireError):
            return leaf
    return leaves[0] if leaves else group


def retry_trailer(message: str, retry_after_s: float) -> tuple[tuple[str, bytes], ...]:
    """RESOURCE_EXHAUSTED as a google.rpc.Status with RetryInfo, in the grpc-status-details-bin trailer."""
    delay = duration_pb2.Duration()
    delay.FromTimedelta(datetime.timedelta(seconds=retry_after_s))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, request_id: str) -> NoReturn:
    if isinstance(exc, BaseExceptionGroup):
        exc = _first_domain_error(exc)
    code, message = status_for(exc, request_id)
    if isinstance(exc, errors.OverCapacity):
        await context.abort(code, message, retry_trailer(message, exc.retry_after_s))
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


@asynccontextmanager
async def mapped_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Turns domain exceptions (also inside task groups) into the status table's codes, naming the
    request id in effect when the error happened (the client's own, once it was adopted)."""
    try:
        yield
    except (errors.VoxwireError, ExceptionGroup) as exc:
        await abort(context, exc, logcontext.request_id.get())
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:
        await abort(context, exc, logcontext.request_id.get())
