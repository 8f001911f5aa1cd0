"""The PyTorch decoder engine (`--asr-engine torch`) against CTranslate2's, decoder time only (the
generate step: features, encoder and alignment are the same code for both and not counted), both
engines in this process, on the same requests, one thread each.

- Long utterances (10-29 s, both dev sets): each is decoded as a stream would be, a partial every
  --step-s of audio (the server's partial interval) up to its end, with the words LocalAgreement
  committed (at the server's default word probability gate) as the forced prefix (the agreement fed
  by the CTranslate2 engine's partials, so both engines get the same prefixes), then the final over
  the whole utterance. The torch engine's partials and final take its previous partial's tokens as
  a draft and its search as stored state.
- Short commands (< 3 s): the final without a draft, and with the draft of a partial 0.5 s before
  the end.
- Resume: a long utterance's partial at its middle, its state through StreamState bytes (msgpack),
  then the next result over the same window with the stored K-V, with the draft only, and cold.
- Greedy tokens of both engines on every clip <= 29 s of both dev sets, and for a clip where they
  differ, where and how near a tie the torch decoder was there (tests/torch_equality.py).
- The encoder: CTranslate2's against Whisper's encoder in PyTorch (engines/torch_encoder.py, int8
  linear layers as the decoder's) on 8, 16 and 30 s windows, median of 5 (which the engine uses).
- int8 against float32 (`--asr-compute-type float32`): the torch engine's decoder time on the long
  and short clips' finals without a draft, and how often its tokens are CTranslate2's.
- RSS of a server-like process holding each engine (a subprocess each, after a warm-up decode).

    .venv/bin/python benchmarks/torch_decoder.py [--step-s 0.5] [--long 10] [--short 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import wave
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.helpers import DATA_DIR, DATA_DIR_2  # noqa: E402
from tests.torch_equality import clips as all_clips  # noqa: E402
from tests.torch_equality import compare  # noqa: E402
from voxwire_server.domain import DecodeOptions  # noqa: E402
from voxwire_server.engines.base import WindowRequest, WindowResult  # noqa: E402
from voxwire_server.engines.whisper import WhisperRecognizer  # noqa: E402
from voxwire_server.sessions.agreement import LocalAgreement  # noqa: E402
from voxwire_server.sessions.stream_state import StreamState  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "torch_decoder.json"
RATE = 16000
# The server's default --partial-commit-probability.
COMMIT_PROBABILITY = 0.55


def load(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path} is not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def _clips(low_s: float, high_s: float, limit: int) -> list[tuple[str, np.ndarray]]:
    rows = []
    for directory in (DATA_DIR, DATA_DIR_2):
        manifest = directory / "manifest.jsonl"
        if not manifest.is_file():
            continue
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            if low_s <= row["duration_s"] <= high_s:
                rows.append((row["id"], directory / row["audio"]))
    rows.sort()
    step = max(1, len(rows) // limit) if limit else 1
    return [(name, load(path)) for name, path in rows[::step][:limit]]


def _timed(rec: WhisperRecognizer, request: WindowRequest) -> tuple[WindowResult, float]:
    before = rec.decoder_time.seconds
    result = rec._decode_speech([request])[0]
    return result, rec.decoder_time.seconds - before


def _text(result: WindowResult) -> str:
    return result.alternatives[0].text if result.alternatives else ""


def _long(
    ct2: WhisperRecognizer, torch: WhisperRecognizer, clips: list[tuple[str, np.ndarray]], step_s: float
) -> dict[str, Any]:
    partial_ct2, partial_torch, final_ct2, final_torch, final_torch_cold = [], [], [], [], []
    same_final = draft_equals_free = 0
    steps = {"partials": [], "finals": []}
    for name, audio in clips:
        agreement = LocalAgreement(min_probability=COMMIT_PROBABILITY)
        draft: tuple[int, ...] = ()
        state = None
        at = int(step_s * RATE)
        while at < audio.size:
            options = DecodeOptions(word_timestamps=agreement.needs_words)
            request = WindowRequest(audio[:at], options, prefix=agreement.prefix)
            a, ta = _timed(ct2, request)
            before = torch._torch.counters.passes  # type: ignore[union-attr]
            b, tb = _timed(torch, replace(request, draft=draft, decoder_state=state, keep_decoder_state=True))
            steps["partials"].append(torch._torch.counters.passes - before)  # type: ignore[union-attr]
            partial_ct2.append(ta)
            partial_torch.append(tb)
            if a.alternatives:
                agreement.update(a.alternatives[0])
            draft, state = b.tokens, b.decoder_state
            at += int(step_s * RATE)
        request = WindowRequest(audio, DecodeOptions(), final=True)
        a, ta = _timed(ct2, request)
        before = torch._torch.counters.passes  # type: ignore[union-attr]
        b, tb = _timed(torch, replace(request, draft=draft, decoder_state=state))
        steps["finals"].append(torch._torch.counters.passes - before)  # type: ignore[union-attr]
        c, tc = _timed(torch, request)
        same_final += _text(a) == _text(b) == _text(c)
        draft_equals_free += b.tokens == c.tokens
        final_ct2.append(ta)
        final_torch.append(tb)
        final_torch_cold.append(tc)
        print(
            f"  {name}: {audio.size / RATE:.1f} s, final ct2 {ta * 1e3:.0f} ms, "
            f"torch+draft {tb * 1e3:.0f} ms",
            flush=True,
        )
    return {
        "clips": len(clips),
        "partials": len(partial_ct2),
        "partial_ms": _pair(partial_ct2, partial_torch),
        "final_ms": _pair(final_ct2, final_torch),
        "final_no_draft_ms": _pair(final_ct2, final_torch_cold),
        "finals_same_text": same_final,
        "finals_draft_tokens_equal_free": draft_equals_free,
        "torch_steps_per_partial_p50": statistics.median(steps["partials"]) if steps["partials"] else 0,
        "torch_steps_per_final_p50": statistics.median(steps["finals"]) if steps["finals"] else 0,
    }


def _short(
    ct2: WhisperRecognizer, torch: WhisperRecognizer, clips: list[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    cold_ct2, cold_torch, drafted_torch = [], [], []
    for _, audio in clips:
        request = WindowRequest(audio, DecodeOptions(), final=True)
        _, ta = _timed(ct2, request)
        _, tb = _timed(torch, request)
        cut = max(int(0.5 * RATE), audio.size - int(0.5 * RATE))
        partial, _ = _timed(torch, WindowRequest(audio[:cut], DecodeOptions()))
        _, tc = _timed(torch, replace(request, draft=partial.tokens))
        cold_ct2.append(ta)
        cold_torch.append(tb)
        drafted_torch.append(tc)
    return {
        "clips": len(clips),
        "final_no_draft_ms": _pair(cold_ct2, cold_torch),
        "final_with_draft_ms": _pair(cold_ct2, drafted_torch),
    }


def _resume(
    ct2: WhisperRecognizer, torch: WhisperRecognizer, clips: list[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    stored, draft_only, cold, ct2_times, sizes, same = [], [], [], [], [], 0
    for _, audio in clips:
        half = audio[: audio.size // 2]
        request = WindowRequest(half, DecodeOptions())
        first, _ = _timed(torch, replace(request, keep_decoder_state=True))
        state = StreamState(
            "k", "s", 1, "m", _options(), {}, 0, 0, None, 0, 0, draft=first.tokens, search=first.decoder_state
        )
        started = time.perf_counter()
        data = state.to_bytes()
        restored = StreamState.from_bytes(data)
        load_s = time.perf_counter() - started
        sizes.append(len(data))
        a, ta = _timed(torch, replace(request, draft=restored.draft, decoder_state=restored.search))
        b, tb = _timed(torch, replace(request, draft=restored.draft))
        c, tc = _timed(torch, request)
        _, td = _timed(ct2, request)
        same += _text(a) == _text(b) == _text(c)
        stored.append(ta + load_s)
        draft_only.append(tb)
        cold.append(tc)
        ct2_times.append(td)
    return {
        "clips": len(clips),
        "same_text": same,
        "state_bytes_p50": statistics.median(sizes),
        "with_stored_kv_ms_p50": statistics.median(stored) * 1e3,
        "draft_only_ms_p50": statistics.median(draft_only) * 1e3,
        "cold_ms_p50": statistics.median(cold) * 1e3,
        "ct2_ms_p50": statistics.median(ct2_times) * 1e3,
    }


def _tokens(ct2: WhisperRecognizer, torch: WhisperRecognizer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for directory in (DATA_DIR, DATA_DIR_2):
        compared = [compare(ct2, torch, name, audio) for name, audio in all_clips(directory)]
        out[directory.name] = {
            "clips": len(compared),
            "same": sum(c.same for c in compared),
            "differ": [
                {
                    "clip": c.clip,
                    "at": c.parted_at,
                    "margin_nats": round(c.margin, 3),
                    "ct2": c.ct2_text,
                    "torch": c.torch_text,
                }
                for c in compared
                if not c.same
            ],
        }
    return out


def _encoders(ct2: WhisperRecognizer, audio: np.ndarray) -> dict[str, Any]:
    from voxwire_server.engines.torch_encoder import TorchWhisperEncoder
    from voxwire_server.engines.whisper import _features

    model = ct2._fast
    encoder = TorchWhisperEncoder(model.path, threads=1)
    out: dict[str, Any] = {}
    for seconds in (8, 16, 30):
        window = seconds * RATE
        features = _features(model.whisper.feature_extractor, audio[: window - RATE], window)[None]
        features = np.ascontiguousarray(features[:, :, : features.shape[-1] // 2 * 2])
        a, b = np.asarray(model.encode(features)), encoder.encode(features)
        times: dict[str, list[float]] = {"ct2": [], "torch": []}
        for _ in range(5):
            for name, run in (("ct2", model.encode), ("torch", encoder.encode)):
                started = time.perf_counter()
                run(features)
                times[name].append(time.perf_counter() - started)
        ct2_ms, torch_ms = (statistics.median(times[k]) * 1e3 for k in ("ct2", "torch"))
        out[f"{seconds}s"] = {
            "ct2_ms": ct2_ms,
            "torch_ms": torch_ms,
            "ratio": torch_ms / ct2_ms,
            "mean_relative_difference": float(np.abs(a - b).mean() / np.abs(a).mean()),
        }
    return out


def _precision(
    ct2: WhisperRecognizer, torch: WhisperRecognizer, clips: list[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    wide = WhisperRecognizer(engine="torch", compute_type="float32")
    wide.warm_up()
    times: dict[str, list[float]] = {"int8": [], "float32": []}
    same = {"int8": 0, "float32": 0}
    for _, audio in clips:
        request = WindowRequest(audio, DecodeOptions(), final=True)
        reference, _ = _timed(ct2, request)
        for name, rec in (("int8", torch), ("float32", wide)):
            result, seconds = _timed(rec, request)
            times[name].append(seconds)
            same[name] += result.tokens == reference.tokens
    wide.close()
    return {
        "clips": len(clips),
        "int8_ms_p50": statistics.median(times["int8"]) * 1e3,
        "float32_ms_p50": statistics.median(times["float32"]) * 1e3,
        "float32_over_int8": sum(times["float32"]) / sum(times["int8"]),
        "tokens_equal_ct2": same,
    }


def _options() -> Any:
    from voxwire_server.domain import AudioFormat, Encoding, RecognitionOptions

    return RecognitionOptions(AudioFormat(Encoding.LINEAR16, 16000, 1))


def _pair(ct2: list[float], torch: list[float]) -> dict[str, float]:
    ratios = [t / c for c, t in zip(ct2, torch, strict=True) if c > 0]
    return {
        "ct2_p50": statistics.median(ct2) * 1e3,
        "torch_p50": statistics.median(torch) * 1e3,
        "ct2_total": sum(ct2) * 1e3,
        "torch_total": sum(torch) * 1e3,
        "ratio_of_totals": sum(torch) / sum(ct2),
        "ratio_p50": statistics.median(ratios),
    }


_RSS = """
import sys, numpy as np
from voxwire_server.engines.whisper import WhisperRecognizer
rec = WhisperRecognizer(engine=sys.argv[1])
rec.warm_up()
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"):
        print(int(line.split()[1]) // 1024)
"""


def _rss(engine: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS, engine],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=300,
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-s", type=float, default=0.5)
    parser.add_argument("--long", type=int, default=10)
    parser.add_argument("--short", type=int, default=24)
    args = parser.parse_args()
    long_clips = _clips(10.0, 29.0, args.long)
    short_clips = _clips(0.0, 3.0, args.short)
    if not long_clips or not short_clips:
        sys.exit(f"no speech-dev data at {DATA_DIR} / {DATA_DIR_2}")
    ct2 = WhisperRecognizer()
    torch = WhisperRecognizer(engine="torch")
    for rec in (ct2, torch):
        rec.warm_up()
    print(f"long utterances: {len(long_clips)}, partial every {args.step_s} s", flush=True)
    report: dict[str, Any] = {
        "long": _long(ct2, torch, long_clips, args.step_s),
        "short": _short(ct2, torch, short_clips),
        "resume": _resume(ct2, torch, long_clips),
        "tokens": _tokens(ct2, torch),
        "encoder": _encoders(ct2, long_clips[0][1]),
        "precision": _precision(ct2, torch, long_clips + short_clips),
    }
    ct2.close()
    torch.close()
    report["rss_mb"] = {"ctranslate2": _rss("ctranslate2"), "torch": _rss("torch")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    lo, sh, re_ = report["long"], report["short"], report["resume"]
    print()
    print(
        "| decoder time (generate step) | CTranslate2 p50 | torch p50 | torch / CT2 (totals) "
        "| p50 of ratios |"
    )
    print("|---|---|---|---|---|")
    for label, pair in (
        (f"partial, long utterances ({lo['partials']})", lo["partial_ms"]),
        (f"final with the last partial's draft ({lo['clips']})", lo["final_ms"]),
        (f"final without a draft ({lo['clips']})", lo["final_no_draft_ms"]),
        (f"short command, no draft ({sh['clips']})", sh["final_no_draft_ms"]),
        (f"short command, with a draft ({sh['clips']})", sh["final_with_draft_ms"]),
    ):
        print(
            f"| {label} | {pair['ct2_p50']:.1f} ms | {pair['torch_p50']:.1f} ms | "
            f"{pair['ratio_of_totals']:.2f}x | {pair['ratio_p50']:.2f}x |"
        )
    print()
    print(
        f"resume, next result over the same window: stored K-V {re_['with_stored_kv_ms_p50']:.1f} ms "
        f"(incl. state decode), draft only {re_['draft_only_ms_p50']:.1f} ms, "
        f"cold {re_['cold_ms_p50']:.1f} ms, "
        f"CTranslate2 {re_['ct2_ms_p50']:.1f} ms; state {re_['state_bytes_p50'] / 1024:.0f} KiB p50; "
        f"same text {re_['same_text']}/{re_['clips']}"
    )
    print(
        f"finals: torch with the draft = torch without it, token for token, "
        f"{lo['finals_draft_tokens_equal_free']}/{lo['clips']}; the same text on CTranslate2 and both "
        f"{lo['finals_same_text']}/{lo['clips']}"
    )
    print(
        f"torch decoder passes: per partial p50 {lo['torch_steps_per_partial_p50']}, "
        f"per final p50 {lo['torch_steps_per_final_p50']}"
    )
    for name, t in report["tokens"].items():
        print(f"greedy tokens equal on {name}: {t['same']}/{t['clips']}")
        for d in t["differ"]:
            print(
                f"  {d['clip']}: token {d['at']}, margin {d['margin_nats']} nats: "
                f"{d['ct2']!r} / {d['torch']!r}"
            )
    for window, e in report["encoder"].items():
        print(
            f"encoder, {window} window: CTranslate2 {e['ct2_ms']:.1f} ms, torch {e['torch_ms']:.1f} ms "
            f"({e['ratio']:.2f}x), outputs differ by {e['mean_relative_difference']:.1%} on average"
        )
    pr = report["precision"]
    print(
        f"torch engine int8 / float32 ({pr['clips']} finals, no draft): p50 {pr['int8_ms_p50']:.1f} / "
        f"{pr['float32_ms_p50']:.1f} ms, float32 takes {pr['float32_over_int8']:.2f}x as long; tokens equal "
        f"to CTranslate2's: int8 {pr['tokens_equal_ct2']['int8']}, "
        f"float32 {pr['tokens_equal_ct2']['float32']}"
    )
    print(f"RSS: CTranslate2 {report['rss_mb']['ctranslate2']} MB, torch {report['rss_mb']['torch']} MB")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
