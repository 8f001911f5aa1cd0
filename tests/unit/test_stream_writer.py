"""StreamWriter: one task writes a stream's responses, in order, and leaves nothing in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from voxwire_server.errors import StreamAbandoned
from voxwire_server.transport.writer import StreamWriter


class Context:
    """The write half of a ServicerContext; `gate` holds writes (a client that stops reading)."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.writing = asyncio.Event()

    async def write(self, message: Any) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.writing.set()
        try:
            await self.gate.wait()
            self.written.append(message)
        finally:
            self.in_flight -= 1


async def test_every_queued_message_is_written_in_order_before_the_block_ends() -> None:
    context = Context()
    context.gate.clear()
    async with StreamWriter(context, queue_messages=4) as writer:  # type: ignore[arg-type]
        for n in range(3):
            await writer.send(n)
        asyncio.get_running_loop().call_soon(context.gate.set)
    assert context.written == [0, 1, 2]
    assert context.in_flight == 0 and context.most_in_flight == 1


async def test_an_error_in_the_block_still_lets_queued_messages_out_first() -> None:
    context = Context()
    with pytest.raises(RuntimeError):
        async with StreamWriter(context) as writer:  # type: ignore[arg-type]
            await writer.send("final")
            raise RuntimeError("the session failed after its final")
    assert context.written == ["final"]
    assert context.in_flight == 0


async def test_a_client_that_reads_nothing_is_given_up_on() -> None:
    context = Context()
    context.gate.clear()
    sent = 0
    with pytest.raises(StreamAbandoned, match="read no response"):
        async with StreamWriter(context, queue_messages=1, write_timeout_s=0.05) as writer:  # type: ignore[arg-type]
            await writer.send("stuck")
            for n in range(100):  # the queue fills, then the timed-out writer drains it
                await writer.send(n)
                sent += 1
    assert sent < 100  # a send failed, not only the end of the block
    assert context.written == []


async def test_a_write_that_times_out_after_the_last_send_fails_the_block() -> None:
    context = Context()
    context.gate.clear()
    with pytest.raises(StreamAbandoned, match="read no response"):
        async with StreamWriter(context, queue_messages=4, write_timeout_s=0.05) as writer:  # type: ignore[arg-type]
            await writer.send("the last final")
    assert context.written == []


async def test_a_cancelled_call_cancels_the_writer() -> None:
    context = Context()
    context.gate.clear()

    async def call() -> None:
        async with StreamWriter(context) as writer:  # type: ignore[arg-type]
            await writer.send("never read")
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await context.writing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert context.in_flight == 0
