"""What --tts-cache-opus-kbps keeps of a reply: size against the PCM it replays, and whether the
replayed audio still says the same.

The 20 assistant replies of tests/fingerprint_eval.py are synthesized by a voxwire-server (LINEAR16,
16 kHz and the voice's 24 kHz), put through the phrase cache's codec (pcm_to_opus, then opus_to_pcm
as a hit does) at several bit rates, and sent back to the same server for recognition
(CACHE_POLICY_BYPASS). Reported per bit rate: the entry's size against the PCM's, the words the
recognizer hears differently in the replayed audio than in the original (WER of the replay against
the original's transcript), and the log-spectral distance between the two (dB, 25 ms frames).

    .venv/bin/python benchmarks/tts_cache_compression.py [--kbps 16,24,32,48]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.server_process import start_server, stop_server  # noqa: E402
from tests.fingerprint_eval import REPLIES  # noqa: E402
from tests.helpers import wer  # noqa: E402
from voxwire import AudioEncoding, CachePolicy, Client, RecognitionConfig  # noqa: E402
from voxwire_server.engines.audio import opus_to_pcm, pcm_to_opus  # noqa: E402


def _log_spectral_distance_db(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    frame = rate // 40
    n = min(a.size, b.size) // frame * frame
    if n == 0:
        return float("nan")
    window = np.hanning(frame)
    spectra = [
        np.abs(np.fft.rfft(x[:n].astype(np.float64).reshape(-1, frame) * window, axis=1)) + 1e-3
        for x in (a, b)
    ]
    loud = 20 * np.log10(spectra[0]).max(axis=1) > 20  # frames with sound in them
    diff = 20 * np.log10(spectra[0][loud] / spectra[1][loud])
    return float(np.sqrt((diff**2).mean(axis=1)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kbps", default="16,24,32,48")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "tts_cache_compression.json"
    )
    args = parser.parse_args()
    rates = [int(k) for k in args.kbps.split(",")]
    rows: list[dict[str, object]] = []
    proc, address = start_server()
    try:
        with Client(address, timeout_s=120) as client:
            for sample_rate_hz in (16000, 24000):
                asr = RecognitionConfig(
                    encoding=AudioEncoding.LINEAR16,
                    sample_rate_hz=sample_rate_hz,
                    cache_policy=CachePolicy.BYPASS,
                )
                originals = []
                for text in REPLIES:
                    spoken = client.synthesize(
                        text,
                        encoding=AudioEncoding.LINEAR16,
                        sample_rate_hz=sample_rate_hz,
                        cache_policy=CachePolicy.BYPASS,
                    )
                    pcm = np.frombuffer(spoken.audio, "<i2").copy()
                    originals.append((pcm, client.recognize(spoken.audio, asr).text))
                for kbps in rates:
                    sizes, pcm_bytes, pairs, distances = 0, 0, [], []
                    for pcm, heard in originals:
                        data = pcm_to_opus(pcm, sample_rate_hz, kbps * 1000)
                        back = opus_to_pcm(data, sample_rate_hz, pcm.size)
                        sizes += len(data)
                        pcm_bytes += pcm.size * 2
                        pairs.append((heard, client.recognize(back.astype("<i2").tobytes(), asr).text))
                        distances.append(_log_spectral_distance_db(pcm, back, sample_rate_hz))
                    rows.append(
                        {
                            "sample_rate_hz": sample_rate_hz,
                            "kbps": kbps,
                            "size_ratio": sizes / pcm_bytes,
                            "wer_vs_original": wer(pairs),
                            "log_spectral_distance_db_p50": statistics.median(distances),
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        stop_server(proc)
    print(f"\n{len(REPLIES)} replies\n")
    print("| PCM rate | Opus kbit/s | entry size / PCM | WER of the replay vs the original's transcript | "
          "log-spectral distance p50 |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['sample_rate_hz']} Hz | {row['kbps']} | {float(row['size_ratio']):.3f} "  # type: ignore[arg-type]
            f"| {100 * float(row['wer_vs_original']):.1f} % "  # type: ignore[arg-type]
            f"| {float(row['log_spectral_distance_db_p50']):.1f} dB |"  # type: ignore[arg-type]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
