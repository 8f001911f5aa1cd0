from __future__ import annotations

import grpc
import pytest

from voxwire_server import errors
from voxwire_server.transport.status import _first_domain_error, status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("voice"), grpc.StatusCode.NOT_FOUND),
        (errors.PreconditionFailed("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.StreamAbandoned("x"), grpc.StatusCode.ABORTED),
        (errors.LimitExceeded("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.OverCapacity("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.NotImplementedCapability("SSML input"), grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_domain_errors_map_to_codes_with_their_message(
    exc: errors.VoxwireError, code: grpc.StatusCode
) -> None:
    assert status_for(exc, "rid") == (code, str(exc))


def test_unimplemented_names_the_capability() -> None:
    _, message = status_for(errors.NotImplementedCapability("SSML input"), "rid")
    assert message.startswith("SSML input is not implemented")


def test_unexpected_errors_hide_their_text() -> None:
    code, message = status_for(RuntimeError("secret /path/and details"), "abc123")
    assert code is grpc.StatusCode.INTERNAL
    assert "secret" not in message
    assert "abc123" in message


def test_task_group_failures_report_the_domain_error() -> None:
    group = ExceptionGroup("tg", [ExceptionGroup("inner", [errors.InvalidInput("chunk too big")])])
    found = _first_domain_error(group)
    assert isinstance(found, errors.InvalidInput)
    assert str(found) == "chunk too big"


def test_backend_errors_reach_the_client_without_the_backends_address() -> None:
    from voxwire_server.storage import StoreUnavailable

    exc = StoreUnavailable("the Redis store at redis://10.1.2.3:6390 is unavailable (ConnectionError)")
    code, message = status_for(exc, "abc123")
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "10.1.2.3" not in message and "6390" not in message
    assert "abc123" in message and "cache store" in message
