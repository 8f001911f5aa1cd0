"""What every call goes through before its handler: credentials, message decoding, metrics.

The handlers' own deserializers are taken out of gRPC's hands: gRPC answers a message that does
not parse with UNKNOWN (unary) or INTERNAL (streams) and the exception's class name. Here a
message that does not parse is INVALID_ARGUMENT, on every RPC, before any work is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from voxwire_server import auth, logcontext
from voxwire_server.auth import ADMIN, OPERATOR, USER, ApiKeys, Principal
from voxwire_server.errors import InvalidInput, PermissionDenied, Unauthenticated, VoxwireError
from voxwire_server.metrics import Telemetry
from voxwire_server.transport.status import status_for

log = logging.getLogger(__name__)

# Roles that may call a method (by full method name, or by service prefix ending in "/"); an empty
# set: any valid key; None: no credentials needed (health probes of load balancers).
_OPEN: None = None
_ANY_KEY: frozenset[str] = frozenset()
METHOD_ROLES: Mapping[str, frozenset[str] | None] = {
    "/voxwire.v1.Recognizer/": frozenset({USER}),
    "/voxwire.v1.Synthesizer/": frozenset({USER}),
    "/voxwire.v1.CacheAdmin/GetStats": frozenset({OPERATOR}),
    "/voxwire.v1.CacheAdmin/Warmup": frozenset({OPERATOR}),
    "/voxwire.v1.CacheAdmin/PurgeUser": frozenset({ADMIN, OPERATOR}),
    "/voxwire.v1.CacheAdmin/SubmitCorrection": frozenset({USER}),
    "/grpc.health.v1.Health/": _OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/": _ANY_KEY,
}


_HEALTH = "/grpc.health.v1.Health/"


def roles_for(method: str) -> frozenset[str] | None:
    if method in METHOD_ROLES:
        return METHOD_ROLES[method]
    service = method[: method.rfind("/") + 1]
    if service in METHOD_ROLES:
        return METHOD_ROLES[service]
    # A method not in the table (a service added later) needs the broadest role, not none.
    return frozenset({OPERATOR})


def _code_name(code: Any) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    for member in grpc.StatusCode:
        if member.value[0] == code:
            return member.name
    return "OK" if code is None else str(code)


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in the type stubs
    _Interceptor = grpc.aio.ServerInterceptor


class CallGuard(_Interceptor):
    """keys None: authentication is off (the embedded single-user server on loopback)."""

    def __init__(self, keys: ApiKeys | None, telemetry: Telemetry) -> None:
        self._keys = keys
        self._telemetry = telemetry
        # Calls in progress, health probes aside (a Watch lasts forever): a drain waits for none.
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def call_started(self, method: str) -> bool:
        if method.startswith(_HEALTH):
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    def call_ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no call is in progress, at most timeout_s; True if none is."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return handler
        method: str = details.method
        guard = _Call(self, method, handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard.unary(handler.unary_unary), response_serializer=serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard.unary_stream(handler.unary_stream), response_serializer=serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                guard.stream(handler.stream_unary), response_serializer=serializer
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            guard.stream(handler.stream_stream), response_serializer=serializer
        )

    def principal(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        roles = roles_for(method)
        if self._keys is None:
            return auth.LOCAL
        if roles is None:
            return auth.ANONYMOUS
        principal = self._keys.authenticate(context.invocation_metadata() or ())
        if roles and not roles & principal.roles:
            wanted = " or ".join(sorted(roles))
            raise PermissionDenied(
                f"{method} needs the {wanted} role; this API key ({principal.key_id}) lacks it"
            )
        return principal


class _Call:
    def __init__(self, guard: CallGuard, method: str, deserializer: Callable[[bytes], Any] | None) -> None:
        self._guard = guard
        self._method = method
        self._deserializer = deserializer
        self._counted = False

    def _start(self) -> float:
        self._counted = self._guard.call_started(self._method)
        return time.perf_counter()

    def _parse(self, raw: bytes) -> Any:
        if self._deserializer is None:
            return raw
        try:
            return self._deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            raise _Undecodable(f"the request message is not a valid {self._method} request") from exc

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Authenticates the call; on failure aborts it with the mapped status."""
        try:
            return auth.use(self._guard.principal(self._method, context))
        except VoxwireError as exc:
            await self._abort(context, exc)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        code, message = status_for(exc, logcontext.request_id.get())
        if isinstance(exc, Unauthenticated):
            log.info("refused %s: %s", self._method, exc)
        await context.abort(code, message)

    def _done(
        self, started: float, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        if self._counted:
            self._guard.call_ended()
        t = self._guard._telemetry
        if error is None:
            code = context.code() or grpc.StatusCode.OK
        elif isinstance(error, grpc.aio.AbortError):
            code = context.code()
        else:
            code = grpc.StatusCode.CANCELLED
        name = self._method.rsplit("/", 1)[-1]
        t.rpc_requests.labels(name, _code_name(code)).inc()
        t.rpc_duration.labels(name).observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _call(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Around every behavior: counted while in flight, authenticated (the principal set for the
        handler), and recorded with the status it ended with."""
        started = self._start()
        error: BaseException | None = None
        try:
            token = await self._admit(context)
            try:
                yield
            finally:
                auth.reset(token)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._done(started, context, error)

    async def _request(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return self._parse(raw)
        except _Undecodable as exc:
            await self._abort(context, exc)

    def unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._call(context):
                return await inner(await self._request(raw, context), context)

        return behavior

    def unary_stream(self, inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._call(context):
                result = inner(await self._request(raw, context), context)
                if not inspect.isasyncgen(result):
                    await result
                    return
                # Closed here when the call ends early, not whenever the collector gets to it: what
                # the handler holds (a concurrency slot, an encoder) goes back at once.
                async with contextlib.aclosing(result):
                    async for response in result:
                        yield response

        return behavior

    def stream(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        # Our streaming handler is a coroutine that writes through context.write; gRPC's own
        # services (reflection) are async generators: the wrapper takes the handler's shape.
        # A bad message raises in our handler's reader (the handler answers it once its writer is
        # done: one writer per stream); a generator handler is aborted here, between its writes.
        async def parsed(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any], *, abort: bool
        ) -> AsyncIterator[Any]:
            async for raw in requests:
                try:
                    message = self._parse(raw)
                except _Undecodable as exc:
                    if not abort:
                        raise
                    await self._abort(context, exc)
                yield message

        if inspect.isasyncgenfunction(inner):

            async def generator(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async with (
                    self._call(context),
                    contextlib.aclosing(inner(parsed(requests, context, abort=True), context)) as responses,
                ):
                    async for response in responses:
                        yield response

            return generator

        async def coroutine(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            async with self._call(context):
                return await inner(parsed(requests, context, abort=False), context)

        return coroutine


class _Undecodable(InvalidInput):
    pass
