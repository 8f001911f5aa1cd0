"""A private redis-server for the test session, on a free loopback port (never a shared 6379)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


def _start(binary: str, port: int, data_dir: Path) -> subprocess.Popen[bytes] | None:
    """The running server, or None when it exited (e.g. the port was taken meanwhile)."""
    log = data_dir / "redis.log"
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--maxmemory", "64mb",
        "--maxmemory-policy", "allkeys-lfu",
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
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (Debian: apt-get install redis-server)"
        if os.environ.get("VOXWIRE_REQUIRE_REDIS") == "1":
            pytest.fail(reason + " and VOXWIRE_REQUIRE_REDIS=1")
        pytest.skip(reason)
    return binary


@contextmanager
def redis_server(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(URL, process) of a redis-server running until the block ends."""
    binary = redis_server_binary()
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        process = _start(binary, port, data_dir)
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
