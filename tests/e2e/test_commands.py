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

from tests.helpers import SAMPLE_JFK, speech_clips, wer
from voxwire import Client, InvalidArgumentError

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
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


JFK = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for "
    "your country."
)


def test_transcribe_the_shipped_sample(server_process: tuple[subprocess.Popen[str], str]) -> None:
    _, target = server_process
    out = cli(target, "transcribe", str(SAMPLE_JFK))
    assert out.returncode == 0, out.stderr
    assert wer([(JFK, out.stdout)]) <= 0.05, out.stdout


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
    # Plain text sent as SSML: the answer says what to do.
    out = cli(target, "say", "Turn on the lights.", "--ssml", "-o", str(tmp_path / "x.wav"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "wrap it in <speak>" in out.stderr, out.stderr
    assert not (tmp_path / "x.wav").exists()


def readme_quick_start() -> list[str]:
    """The commands of the README's quick start (its second sh block), continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Run it") :]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [line.strip() for line in blocks[1].replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_quick_start_runs_as_written(
    server_process: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    # As a user runs it from a clone: the CLI from .venv/bin, the sample from samples/, no ../shared.
    _, target = server_process
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(BIN)
    env = {**os.environ, "VOXWIRE_SERVER": target}
    outputs = []
    for command in readme_quick_start():
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append((command, done.stdout + done.stderr))
    assert len(outputs) == 8
    assert "ask not what your country can do for you" in outputs[0][1].lower()
    assert "[final" in outputs[1][1] and "[partial]" in outputs[1][1]
    assert "kitchen lights" in outputs[2][1].lower()
    assert "cached 0 phrases and 1 template prefixes" in outputs[3][1]
    assert "cache stitched" in outputs[4][1]
    assert "cache hit" in outputs[5][1]
    assert "removed 1 cache entries" in outputs[-1][1]


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
