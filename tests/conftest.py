"""A real voxwire server (real models) on 127.0.0.1, shared by the integration tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.redis_server import redis_url  # noqa: F401  (the session's redis-server fixture)
from voxwire_server.app import App
from voxwire_server.config import ServerConfig


@dataclass
class RunningServer:
    app: App
    target: str
    loop: asyncio.AbstractEventLoop


@dataclass
class ServerThread:
    """Runs an App on its own event loop in a background thread."""

    running: RunningServer
    thread: threading.Thread
    stop_event: asyncio.Event

    def stop(self) -> None:
        self.running.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=30)


def serve_in_thread(config: ServerConfig) -> ServerThread:
    ready: dict[str, object] = {}
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = App(config)

        async def main() -> None:
            stop_event = asyncio.Event()
            try:
                await app.start()
            except BaseException as exc:
                ready["error"] = exc
                started.set()
                raise
            ready["server"] = RunningServer(app, f"127.0.0.1:{app.port}", loop)
            ready["stop"] = stop_event
            started.set()
            await stop_event.wait()
            await app.stop(grace_s=1.0)

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="voxwire-test-server", daemon=True)
    thread.start()
    if not started.wait(timeout=120):
        raise RuntimeError("the test server did not start within 120 s")
    if "error" in ready:
        raise RuntimeError("the test server failed to start") from ready["error"]  # type: ignore[misc]
    server, stop_event = ready["server"], ready["stop"]
    assert isinstance(server, RunningServer) and isinstance(stop_event, asyncio.Event)
    return ServerThread(server, thread, stop_event)


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    handle = serve_in_thread(ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=1.0).validate())
    yield handle.running
    handle.stop()
