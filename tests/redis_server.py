"""A private redis-server for the test session, on a free loopback port (never a shared 6379)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import require_binary

_START_TIMEOUT_S = 10.0
_START_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start(binary: str, port: int, data_dir: Path, policy: str) -> subprocess.Popen[bytes] | None:
    """The running server, or None when it exited (e.g. the port was taken meanwhile)."""
    log = data_dir / "redis.log"
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--maxmemory", "64mb",
        "--maxmemory-policy", policy,
        "--dir", str(data_dir),
        "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:  # a bounded poll, not a fixed sleep
        if process.poll() is not None:
            return None
        if _answers_ping(port):
            return process
        time.sleep(0.02)
    _stop(process)
    raise RuntimeError(f"redis-server on port {port} did not answer PING in {_START_TIMEOUT_S} s; see {log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def redis_server_binary() -> str:
    """The redis-server path; skips (or fails with VOXWIRE_REQUIRE_REDIS=1) when there is none."""
    return require_binary("redis-server", "redis-server", "VOXWIRE_REQUIRE_REDIS")


@contextmanager
def redis_server(
    data_dir: Path, policy: str = "allkeys-lfu"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(URL, process) of a redis-server running until the block ends (a cache's eviction policy by
    default; live stream state wants noeviction)."""
    binary = redis_server_binary()
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        process = _start(binary, port, data_dir, policy)
        if process is not None:
            break
    else:
        log = data_dir / "redis.log"
        raise RuntimeError(f"redis-server exited at start {_START_ATTEMPTS} times; see {log}")
    try:
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """redis://127.0.0.1:N/0 of a redis-server started for this session (allkeys-lfu, 64 MB)."""
    redis_server_binary()
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url
