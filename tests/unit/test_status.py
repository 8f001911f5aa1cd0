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


class _AbortingContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str, *trailers: object) -> None:
        self.aborted = (code, message)
        raise grpc.aio.AbortError()


async def test_errors_name_the_clients_request_id_once_adopted() -> None:
    from voxwire_server.logcontext import new_request_id, use_request_id
    from voxwire_server.transport.status import mapped_errors

    new_request_id()
    context = _AbortingContext()
    with pytest.raises(grpc.aio.AbortError):
        async with mapped_errors(context):  # type: ignore[arg-type]
            use_request_id("client-req-7")
            raise RuntimeError("boom")
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal error (request id client-req-7)")


@pytest.mark.parametrize("rid", ["has space", "x" * 65, "line\nbreak", "café", "[brackets]"])
def test_request_ids_that_could_garble_a_log_line_are_refused(rid: str) -> None:
    from voxwire.v1 import common_pb2
    from voxwire_server.transport import convert

    with pytest.raises(errors.InvalidInput, match="request_id must be"):
        convert.context(common_pb2.RequestContext(request_id=rid), "server-id")
    ok = convert.context(common_pb2.RequestContext(request_id="svc.A:1-b_2"), "server-id")
    assert ok.request_id == "svc.A:1-b_2"
    assert convert.context(common_pb2.RequestContext(), "server-id").request_id == "server-id"
