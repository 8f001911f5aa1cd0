"""Greedy tokens of the torch engine against the CTranslate2 engine's, clip by clip, and for a clip
where they differ, how close the torch decoder was to CTranslate2's token where they parted (its
log-probability of its own choice less that of CTranslate2's: a near tie is a small number)."""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voxwire_server.domain import DecodeOptions
from voxwire_server.engines.base import WindowRequest
from voxwire_server.engines.whisper import WhisperRecognizer


@dataclass(frozen=True)
class Compared:
    clip: str
    same: bool
    ct2_text: str
    torch_text: str
    # Where the tokens part (-1: they do not), and the torch decoder's margin there (nats).
    parted_at: int = -1
    margin: float = 0.0


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path} is not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def clips(data: Path, max_duration_s: float = 29.0) -> list[tuple[str, np.ndarray]]:
    out = []
    for line in (data / "manifest.jsonl").read_text().splitlines():
        item = json.loads(line)
        if float(item["duration_s"]) <= max_duration_s:
            out.append((item["id"], read_wav(data / item["audio"])))
    return out


def compare(ct2: WhisperRecognizer, engine: WhisperRecognizer, name: str, audio: np.ndarray) -> Compared:
    request = WindowRequest(audio, DecodeOptions())
    a = ct2._decode_speech([request])[0]
    b = engine._decode_speech([request])[0]
    texts = (
        a.alternatives[0].text if a.alternatives else "",
        b.alternatives[0].text if b.alternatives else "",
    )
    if a.tokens == b.tokens:
        return Compared(name, True, *texts)
    parted = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)) if x != y), None)
    if parted is None:
        parted = min(len(a.tokens), len(b.tokens))
    return Compared(name, False, *texts, parted, _margin(engine, request, a.tokens, b.tokens, parted))


def _margin(
    engine: WhisperRecognizer,
    request: WindowRequest,
    ct2_tokens: tuple[int, ...],
    own: tuple[int, ...],
    at: int,
) -> float:
    model = engine._fast
    assert engine._torch is not None
    search = engine._torch._decoders[model.path]
    tokenizer, _ = model.tokenizer("en")
    window = engine._window(request)
    encoded, _, _ = engine._encoded(model, [request], window)
    head = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    known = [*head, *ct2_tokens[:at]]
    cache = search.decoder.start(np.asarray(encoded), len(known) + 1)
    with torch.inference_mode():
        hidden = search.decoder.forward(cache, torch.tensor([known]), [len(known)])
        lp = torch.log_softmax(search.decoder.log_probs(hidden[0, -1]), dim=-1)
    theirs = ct2_tokens[at] if at < len(ct2_tokens) else int(tokenizer.eot)
    mine = own[at] if at < len(own) else int(tokenizer.eot)
    return float(lp[mine] - lp[theirs])
