"""Real replicas for tests: voxwire-server processes on fixed loopback ports (a restarted replica
comes back where the balancer expects it) behind a real HAProxy speaking gRPC over HTTP/2."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import require_binary
from tests.redis_server import _free_port
from voxwire import AsyncClient

_START_TIMEOUT_S = 120.0


def haproxy_binary() -> str:
    """The haproxy path; skips (or fails with VOXWIRE_REQUIRE_HAPROXY=1) when there is none."""
    return require_binary("haproxy", "haproxy", "VOXWIRE_REQUIRE_HAPROXY")


@dataclass
class Replica:
    """One voxwire-server process; start() again after a kill brings it back on the same port."""

    name: str
    args: list[str]
    log_dir: Path
    port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "voxwire-server"),
            "--listen", self.address,
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            *self.args,
        ]  # fmt: skip
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        asyncio.run(_until_serving(self.address, self.process))

    def kill(self) -> None:
        """kill -9: no drain, no goodbye."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM: the drain; returns once the process has exited."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def counter(self, name: str, **labels: str) -> float:
        """A counter's value from the replica's /metrics (0 when absent)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = (
            rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} ([0-9.e+]+)$" if labels else rf"^{name} (\S+)$"
        )
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


async def _until_serving(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    async with AsyncClient(address, timeout_s=1.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"voxwire-server at {address} exited with {process.returncode} at start")
            try:
                if await client.health() == "SERVING":
                    return
            except Exception:  # not listening yet, or still loading its models
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"voxwire-server at {address} did not serve within {_START_TIMEOUT_S} s")


class HaProxy:
    """HAProxy in front of the replicas: gRPC (HTTP/2 cleartext) on both sides, a health check every
    200 ms. The first replica serves; the others are backups, used while it is down, so the one
    serving the streams is known."""

    def __init__(self, replicas: list[Replica], log_dir: Path) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._socket = log_dir / "haproxy.sock"
        servers = "\n".join(
            f"    server {r.name} {r.address} proto h2 check inter 200ms fall 1 rise 2"
            + (" backup" if n else "")
            for n, r in enumerate(replicas)
        )
        config = log_dir / "haproxy.cfg"
        config.write_text(
            f"""global
    stats socket {self._socket} mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
frontend voxwire
    bind 127.0.0.1:{self.port} proto h2
    default_backend replicas
backend replicas
{servers}
"""
        )
        log = (log_dir / "haproxy.log").open("ab")
        self.process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while not self.states() and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited at start; see {log_dir / 'haproxy.log'}")
            time.sleep(0.05)

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it (UP, DOWN, ...); {} while HAProxy is not up."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(str(self._socket))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r.get("pxname") == "replicas"}

    def wait_until(self, name: str, status: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.states().get(name, "").split(" ")[0] != status:
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy never saw {name} {status}: {self.states()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
