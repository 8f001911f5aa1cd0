"""Stream state: how large an endpointer's snapshot is, and whether one restored from it goes on alike.

For every clip of the data folders (speech-dev by default; --data for others), at --points random
sample offsets: the endpointer's snapshot through the stream-state codec (its size in bytes), and a
fresh endpointer restored from it and fed the rest of the clip in 20 ms chunks, compared with one
that ran through (the same utterance boundaries and audio, or not). Two ways: the server's (the VAD
renewed as the endpointer goes), and a VAD that is never renewed (the restored one hears only the
audio the snapshot holds, not all the old one had heard). Prints a Markdown table and writes JSON.

    .venv/bin/python benchmarks/stream_state.py \
        --data ../shared/data/speech-dev --data ../shared/data/speech-dev-2
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.asr_accuracy import load  # noqa: E402
from tests.helpers import DATA_DIR  # noqa: E402
from voxwire_server.domain import AudioFormat, Encoding, Endpointing  # noqa: E402
from voxwire_server.engines.audio import decode_clip, float_to_pcm16  # noqa: E402
from voxwire_server.engines.vad import WebRtcVad  # noqa: E402
from voxwire_server.sessions.endpointing import Endpointer, EndpointEvent, UtteranceEnded  # noqa: E402
from voxwire_server.storage.codec import pack, unpack  # noqa: E402

CHUNK = 320


def _endpointer(config: Endpointing, renew: bool) -> Endpointer:
    vad = functools.partial(WebRtcVad, config.vad_aggressiveness)
    return Endpointer(vad(), config, renew_vad=vad if renew else None)


def _run(endpointer: Endpointer, audio: npt.NDArray[np.int16], flush: bool) -> list[EndpointEvent]:
    events: list[EndpointEvent] = []
    for i in range(0, audio.size, CHUNK):
        events += endpointer.push(audio[i : i + CHUNK])
    return events + (endpointer.flush() if flush else [])


def _shape(events: list[EndpointEvent]) -> list[tuple[object, ...]]:
    return [
        (e.audio_start, e.speech_end, e.audio.size) if isinstance(e, UtteranceEnded) else (e.speech_start,)
        for e in events
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", type=Path, help="data folder(s) (default speech-dev)")
    parser.add_argument("--points", type=int, default=3, help="random snapshot points per clip")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_state.json"))
    args = parser.parse_args()
    folders: list[Path] = args.data or [DATA_DIR]
    for folder in folders:
        if not (folder / "manifest.jsonl").is_file():
            raise SystemExit(f"no manifest.jsonl in {folder} (speech-dev: set VOXWIRE_DATA_DIR or --data)")
    clips = [c for folder in folders for c in load(folder, 600.0)]
    config = Endpointing()
    rng = random.Random(args.seed)
    sizes: list[int] = []
    same = {True: 0, False: 0}
    total = 0
    for clip in clips:
        audio = float_to_pcm16(decode_clip(clip.path.read_bytes(), AudioFormat(Encoding.WAV), 600.0))
        whole = {renew: _shape(_run(_endpointer(config, renew), audio, True)) for renew in (True, False)}
        for _ in range(args.points):
            cut = rng.randrange(audio.size)
            total += 1
            for renew in (True, False):
                first = _endpointer(config, renew)
                events = _run(first, audio[:cut], False)
                blob = pack(first.snapshot())
                if renew:
                    sizes.append(len(blob))
                resumed = _endpointer(config, renew)
                resumed.restore(unpack(blob))
                events += _run(resumed, audio[cut:], True)
                same[renew] += _shape(events) == whole[renew]
    sizes.sort()

    def pct(q: float) -> int:
        return sizes[min(len(sizes) - 1, round(q * (len(sizes) - 1)))]

    report = {
        "clips": len(clips),
        "snapshots": total,
        "same_utterances": {"renewed_vad": same[True], "kept_vad": same[False]},
        "snapshot_bytes": {
            "p50": statistics.median(sizes),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "max": sizes[-1],
        },
    }
    print(f"\n{len(clips)} clips, {total} snapshots at random points\n")
    print("| VAD | restored endpointers that cut the same utterances |")
    print("|---|---|")
    print(f"| renewed as the endpointer goes (the server's) | {same[True]} of {total} |")
    print(f"| kept, never renewed | {same[False]} of {total} |")
    print("\n| snapshot bytes (codec) | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    print(f"| endpointer | {statistics.median(sizes):.0f} | {pct(0.9)} | {pct(0.99)} | {sizes[-1]} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
