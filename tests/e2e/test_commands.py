"""The installed commands, as a new user runs them: voxwire-server in its own process, the voxwire CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import speech_clips, wer
from voxwire import Client, InvalidArgumentError

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [str(BIN / "voxwire-server"), "--listen", "127.0.0.1:0", "--shutdown-grace-s", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VOXWIRE_LOG_LEVEL": "INFO"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the models are warm and health is SERVING
    match = re.search(r"listening on (\S+:\d+)", line)
    if match is None:
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    yield proc, match.group(1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "voxwire"), "--server", target, *args], capture_output=True, text=True, timeout=120
    )


def test_health_and_voices(server_process: tuple[subprocess.Popen[str], str]) -> None:
    _, target = server_process
    health = cli(target, "health")
    assert health.returncode == 0 and "SERVING" in health.stdout
    assert "heart" in cli(target, "voices").stdout


def test_transcribe_jfk(server_process: tuple[subprocess.Popen[str], str]) -> None:
    _, target = server_process
    (clip,) = speech_clips(["jfk_inaugural_1961"])
    out = cli(target, "transcribe", str(clip.path))
    assert out.returncode == 0, out.stderr
    assert wer([(clip.text, out.stdout)]) <= 0.05, out.stdout


def test_say_then_transcribe(server_process: tuple[subprocess.Popen[str], str], tmp_path: Path) -> None:
    _, target = server_process
    wav = tmp_path / "x.wav"
    said = cli(target, "say", "Turn on the kitchen lights", "-o", str(wav))
    assert said.returncode == 0, said.stderr
    out = cli(target, "transcribe", str(wav))
    assert out.returncode == 0, out.stderr
    assert wer([("Turn on the kitchen lights", out.stdout)]) == 0, out.stdout


def test_stream_prints_events_and_finals(server_process: tuple[subprocess.Popen[str], str]) -> None:
    _, target = server_process
    (clip,) = speech_clips(["harvard_sb_spk1_snt1"])
    out = cli(target, "stream", str(clip.path))
    assert out.returncode == 0, out.stderr
    assert "[speech started" in out.stdout
    finals = [line for line in out.stdout.splitlines() if line.startswith("[final")]
    assert len(finals) == 1
    assert wer([(clip.text, finals[0].split("]", 1)[1])]) <= 0.15


def test_errors_are_reported_with_their_code(
    server_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    _, target = server_process
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF" + os.urandom(2000))
    out = cli(target, "transcribe", str(garbage))
    assert out.returncode != 0
    assert "voxwire: error" in out.stderr
    assert "Traceback" not in out.stderr


def test_logs_carry_the_clients_request_id_and_no_transcripts_and_sigterm_stops_cleanly(
    server_process: tuple[subprocess.Popen[str], str],
) -> None:
    proc, target = server_process
    with Client(target, timeout_s=60) as client:
        client.synthesize("Turn on the kitchen lights", request_id="client-rid-0042")
        with pytest.raises(InvalidArgumentError, match="request_id must be"):
            client.synthesize("Hello", request_id="two words")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "stopped" in stderr
    # The log line about the synthesis carries the id the client gave.
    assert any("[client-rid-0042]" in line and "synthesized" in line for line in stderr.splitlines())
    assert "kitchen lights" not in stderr.lower()
    assert "ask not what your country" not in stderr.lower()
