"""The voxwire-server process the benchmarks drive: started on a free loopback port, stopped after."""

from __future__ import annotations

import re
import select
import subprocess
import sys
from pathlib import Path

START_TIMEOUT_S = 180.0


def start_server(*flags: str) -> tuple[subprocess.Popen[str], str]:
    """Starts `voxwire-server --listen 127.0.0.1:0 --log-level WARNING FLAGS…`; returns it and its address."""
    command = [
        str(Path(sys.executable).parent / "voxwire-server"),
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "WARNING",
        *flags,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    found = re.search(r"listening on (127\.0\.0\.1:\d+)", proc.stdout.readline()) if ready else None
    if found is None:
        proc.kill()
        proc.wait()
        raise SystemExit("voxwire-server did not start on loopback")
    return proc, found.group(1)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
