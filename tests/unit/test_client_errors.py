"""voxwire.errors: status code -> exception class, retryable flags, retry delay from status details."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from voxwire import errors
from voxwire.errors import VoxwireError, from_rpc_error


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str | None = "", trailing: tuple[tuple[str, object], ...] = ()
    ) -> None:
        super().__init__()
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing


@pytest.mark.parametrize(
    ("code", "cls", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError, False),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError, False),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError, False),
        (grpc.StatusCode.OUT_OF_RANGE, errors.OutOfRangeError, False),
        (grpc.StatusCode.UNIMPLEMENTED, errors.UnimplementedError, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError, True),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError, True),
        (grpc.StatusCode.ABORTED, errors.AbortedError, True),
        (grpc.StatusCode.CANCELLED, errors.RequestCancelledError, False),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError, False),
        (grpc.StatusCode.UNAUTHENTICATED, errors.PermissionDeniedError, False),
        (grpc.StatusCode.INTERNAL, errors.ServerError, False),
        (grpc.StatusCode.UNKNOWN, errors.ServerError, False),
        (grpc.StatusCode.DATA_LOSS, errors.ServerError, False),
        (grpc.StatusCode.ALREADY_EXISTS, errors.ServerError, False),
    ],
)
def test_status_code_maps_to_class(code: grpc.StatusCode, cls: type[VoxwireError], retryable: bool) -> None:
    err = from_rpc_error(FakeRpcError(code, "the details"))
    assert type(err) is cls
    assert isinstance(err, VoxwireError)
    assert err.code == code.name
    assert err.details == "the details"
    assert err.retryable is retryable
    assert str(err) == f"{code.name}: the details"
    assert err.retry_after_s is None


def test_every_status_code_maps_to_a_subclass_with_its_name() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        err = from_rpc_error(FakeRpcError(code))
        assert err.code == code.name
        assert str(err) == code.name  # no details, no trailing colon


def test_an_rpc_error_without_code_or_details_is_a_server_error() -> None:
    err = from_rpc_error(grpc.RpcError())
    assert type(err) is errors.ServerError
    assert (err.code, err.details) == ("UNKNOWN", "")


def test_none_details_become_empty() -> None:
    assert from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, None)).details == ""


def _status_with_retry_info(seconds: int, nanos: int) -> bytes:
    other = any_pb2.Any()
    other.Pack(error_details_pb2.ErrorInfo(reason="why"))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)))
    return status_pb2.Status(code=8, message="busy", details=[other, packed]).SerializeToString()


def test_retry_after_is_read_from_status_details() -> None:
    trailing = (("other", "x"), ("grpc-status-details-bin", _status_with_retry_info(2, 500_000_000)))
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", trailing))
    assert isinstance(err, errors.ResourceExhaustedError)
    assert err.retry_after_s == pytest.approx(2.5)


@pytest.mark.parametrize("blob", [b"\xff", b"\x1a\x7f\x00", b"\x0f", b""])
def test_malformed_status_details_are_ignored(blob: bytes) -> None:
    trailing = (("grpc-status-details-bin", blob),)
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", trailing))
    assert isinstance(err, errors.UnavailableError)
    assert err.retry_after_s is None


@pytest.mark.parametrize("side", ["Received", "Sent"])
def test_grpc_message_size_refusal_is_out_of_range_not_retryable(side: str) -> None:
    exc = from_rpc_error(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{side} message larger than max (9 vs. 4)")
    )
    assert isinstance(exc, errors.OutOfRangeError)
    assert not exc.retryable
    assert "StreamingRecognize" in exc.details


def test_capacity_resource_exhausted_stays_retryable() -> None:
    exc = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "at its limit of 2 streams"))
    assert isinstance(exc, errors.ResourceExhaustedError)
    assert exc.retryable
