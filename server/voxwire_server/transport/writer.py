"""One writer per stream: every response of a bidi stream goes through one task, so a write and the
call's final status can never race (gRPC refuses an abort while a write is in flight, with
GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, and the client is left waiting without a status)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any, Self

import grpc

from voxwire_server.errors import StreamAbandoned

log = logging.getLogger(__name__)

# Responses queued for the writer before an emit waits (backpressure on the session).
QUEUE_MESSAGES = 64
WRITE_TIMEOUT_S = 30.0


class StreamWriter:
    """`async with StreamWriter(context) as w: await w.send(message)`; on leaving, every queued message
    has been written (or the client is gone) and no write is in flight, so the caller may then end
    the call with any status."""

    def __init__(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        queue_messages: int = QUEUE_MESSAGES,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        """write_timeout_s: a client that takes in no response for this long is given up on (HTTP/2
        flow control would otherwise hold the stream, and its slot, for as long as it likes)."""
        self._write_timeout_s = write_timeout_s
        self._context = context
        self._queue: asyncio.Queue[Any] = asyncio.Queue(queue_messages)
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="stream-writer")
        return self

    async def send(self, message: Any) -> None:
        self._raise_if_failed()
        await self._queue.put(message)

    def _raise_if_failed(self) -> None:
        if isinstance(self._failed, StreamAbandoned):
            raise StreamAbandoned(str(self._failed))
        if self._failed is not None:
            raise StreamAbandoned("the client stopped reading responses") from self._failed

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            if self._failed is not None:
                continue  # drain, so senders never block on a client that is gone
            try:
                async with asyncio.timeout(self._write_timeout_s):
                    await self._context.write(message)
            except TimeoutError:
                log.info(
                    "the client read no response for %.0f s: giving the stream up", self._write_timeout_s
                )
                self._failed = StreamAbandoned(
                    f"the client read no response for {self._write_timeout_s:.0f} s"
                )
            except Exception as exc:  # the call is over (client cancelled, connection lost)
                log.debug("a stream write failed: %s", exc)
                self._failed = exc

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task = self._task
        assert task is not None
        if isinstance(exc, asyncio.CancelledError) or task.done():
            # The call itself was cancelled: there is nobody to write to.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        # Write what was queued (finals before an error still reach the client), then stop. A
        # cancellation of this wait (the client went away) stops the writer too.
        try:
            await self._queue.put(None)
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if exc is None:
            # A write that failed after the last send (a client that stopped reading before the
            # finals) must not end the call as if everything had reached it.
            self._raise_if_failed()
