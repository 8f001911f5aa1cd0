"""The recognition caches: repeated speech answered, or dropped, before the model.

Tiers, consulted per utterance (a stream's finals and each utterance of a Recognize clip), in order:

- correction: the transcript a user of the tenant submitted for this audio (SubmitCorrection), found
  by the exact audio key, and by fingerprint when the fuzzy tier is on;
- exact: the same samples (16 kHz mono int16, leading and trailing digital silence trimmed), the same
  model version (a hash of the weights) and the same decode options that change text;
- self-echo: a fingerprint found inside speech this server synthesized for the tenant in the last
  minutes: the assistant hearing itself through its speaker. Dropped, no transcript;
- negative: the fingerprint of a recording that decoded to nothing before (noise, hum, a TV, a false
  trigger): dropped, no transcript;
- fuzzy (off by default): the fingerprint of the same recording arriving again through another
  channel (re-encoded, with noise, louder or softer), verified over the whole utterance. It is not,
  and must not be used as, a match for a person saying the same words again;
- component (off by default): not an answer but the encoder's output for the same audio on the same
  tier, so a repeat with other decode options skips the encoder.

A person's words are never shared across tenants: every key and tag is an HMAC under the keyring's
secret with the tenant in it. Entries are the tenant's (a user of the tenant hearing the same recording
gets the same text) and carry the owner tag of the user whose request made them, so PurgeUser removes
every record of a user in every tier. Values are sealed (AES-256-GCM, envelope.py). No audio is
stored: exact entries hold text; fingerprint tiers hold 4 bytes per 16 ms hop, which do not give back
the audio; the component tier holds encoder outputs, under a short TTL. The running context of a
stream (the text before an utterance) is not part of a key: an utterance heard again is answered with
the text it had the first time.

A store that is down is a miss (the model decodes), never an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from voxwire_server.caches import fingerprint as fp
from voxwire_server.caches.keyring import Keyring, Opened
from voxwire_server.domain import (
    Alternative,
    CachePolicy,
    CacheStatus,
    DecodeOptions,
    RequestContext,
    Tier,
    Word,
)
from voxwire_server.engines.audio import ASR_SAMPLE_RATE_HZ
from voxwire_server.engines.base import WindowResult
from voxwire_server.errors import InvalidInput, LimitExceeded, NotImplementedCapability
from voxwire_server.storage import StoreStats, StoreUnavailable

__all__ = [
    "COMPONENT",
    "CORRECTION",
    "EXACT",
    "FUZZY",
    "NEGATIVE",
    "SELF_ECHO",
    "TIERS",
    "Lookup",
    "Printed",
    "Probe",
    "RecognitionCache",
    "RecognitionCacheSettings",
    "TierTenantStats",
    "trimmed",
]

log = logging.getLogger(__name__)

CORRECTION = "asr.correction"
COMPONENT = "asr.component"
EXACT = "asr.exact"
SELF_ECHO = "asr.self_echo"
NEGATIVE = "asr.negative"
FUZZY = "asr.fuzzy"
TIERS = (CORRECTION, EXACT, SELF_ECHO, NEGATIVE, FUZZY, COMPONENT)
# One fingerprint index lists the negative and the fuzzy entries of a scope: one read for both.
_PRINTS = "asr.prints"
_STATUS = {
    CORRECTION: CacheStatus.CORRECTION,
    EXACT: CacheStatus.EXACT,
    SELF_ECHO: CacheStatus.SELF_ECHO,
    NEGATIVE: CacheStatus.NEGATIVE,
    FUZZY: CacheStatus.FUZZY,
}
# Bump when the layout of a stored value changes: old entries are then never found.
_FORMAT = 1
# Samples at most this loud at either end are trimmed before hashing (-66 dBFS): digital silence and
# dither, which a client's retry or a reconnect may pad differently.
_TRIM_LEVEL = 16
# Fingerprint candidates verified per lookup (the most votes from the LSH buckets first).
_CANDIDATES = 8
# Latencies kept per tier and tenant for GetStats' medians.
_LATENCY_SAMPLES = 512
# Tenants counted apart in GetStats and metric labels; the rest share one row.
_MAX_TENANTS = 1000
OTHER_TENANTS = "(other)"
# Fingerprint writes in the background at once (beyond: written before the final, as backpressure).
_MAX_BACKGROUND = 256
_CLOSE_TIMEOUT_S = 5.0
_AUDIO_KEY = re.compile(r"[0-9a-f]{64}")
_MAX_CORRECTION_CHARS = 2000


def trimmed(audio: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """The samples between the first and the last one louder than digital silence."""
    start, end = _loud_span(audio)
    return audio[start:end]


def _loud_span(audio: npt.NDArray[np.int16]) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > _TRIM_LEVEL)
    return (0, 0) if loud.size == 0 else (int(loud[0]), int(loud[-1]) + 1)


@dataclass(frozen=True, slots=True)
class RecognitionCacheSettings:
    exact: bool = True
    correction: bool = True
    exact_ttl_s: float = 86_400.0
    fuzzy: bool = False
    fuzzy_ttl_s: float = 3_600.0
    negative: bool = True
    negative_ttl_s: float = 3_600.0
    # Off by default: a tenant that synthesizes speech and recognizes it on purpose (a round trip)
    # would have it dropped.
    self_echo: bool = False
    # How long synthesized speech is listened for: the reply's length plus the room's delay, with room.
    self_echo_ttl_s: float = 120.0
    correction_ttl_s: float = 30 * 86_400.0
    # Older model versions whose exact entries may still answer (stale-while-revalidate): each hit on
    # one is decoded again with the current model in the background (see on_stale).
    stale_models: tuple[str, ...] = ()
    # Encoder outputs, float32 as the encoder made them (fp16 changed beam-search text): 600 KB for the
    # fast tier's 8 s window, 2.3 MB for 30 s. Off by default, short-lived.
    component: bool = False
    component_ttl_s: float = 600.0
    # Utterances longer than this are neither looked up nor stored (commands are short).
    max_audio_s: float = 30.0
    # Entry keys kept per LSH bucket, newest first.
    bucket_members: int = 32
    # Replies per tenant listened for as self-echo.
    echo_replies: int = 32
    # A fuzzy entry hit from this many different recordings within collision_window_s raises the alarm.
    collision_recordings: int = 10
    collision_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Printed:
    """An utterance's fingerprint with its LSH bucket ids: those a lookup reads, those a store adds to."""

    print: fp.Fingerprint
    probe_ids: tuple[int, ...]
    index_ids: tuple[int, ...]

    @classmethod
    def of(cls, samples: npt.NDArray[np.int16]) -> Printed:
        """CPU work (a few ms for a command): run it off the event loop."""
        printed = fp.fingerprint(samples)
        if printed.frames.size == 0:
            return cls(printed, (), ())
        index, probes = fp.lsh_keys(printed)
        return cls(printed, tuple(dict.fromkeys(probes)), tuple(dict.fromkeys(index)))


@dataclass(frozen=True, slots=True)
class Probe:
    """What a lookup learnt of one utterance, for storing the model's answer after a miss."""

    context: RequestContext
    options: DecodeOptions
    audio_key: str
    duration_s: float
    print: Printed | None
    # Digital silence trimmed before the audio: stored word times count from after it.
    lead_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """status NONE: not consulted (probe None); MISS: decode, then store(); otherwise the answer."""

    status: CacheStatus
    alternatives: tuple[Alternative, ...] = ()
    tier: Tier = Tier.FAST
    probe: Probe | None = None
    # Answered by an entry of an older model version (stale-while-revalidate).
    stale: bool = False

    @property
    def answered(self) -> bool:
        return self.status not in (CacheStatus.NONE, CacheStatus.MISS)

    @property
    def audio_key(self) -> str:
        return "" if self.probe is None else self.probe.audio_key


_NOT_CONSULTED = Lookup(CacheStatus.NONE)


@dataclass(frozen=True, slots=True)
class TierTenantStats:
    tier: str
    tenant_id: str
    requests: int
    hits: int
    model_seconds_saved: float
    hit_latency_p50_ms: float
    miss_latency_p50_ms: float
    collisions: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


@dataclass
class _Counts:
    requests: int = 0
    hits: int = 0
    saved_s: float = 0.0
    collisions: int = 0
    hit_latency_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_SAMPLES)
    )
    miss_latency_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_SAMPLES)
    )


class CacheObserver:
    """Where lookups are counted (Prometheus in the server; nothing by default)."""

    def lookup(self, tier: str, tenant_id: str, hit: bool, latency_s: float, saved_s: float) -> None:
        pass

    def collision(self, tier: str, tenant_id: str) -> None:
        pass


def _options_digest(options: DecodeOptions) -> str:
    """Every decode option that changes text; the endpointing does not (the audio is the utterance)."""
    parts = (
        options.tier.value,
        options.language,
        list(options.hotwords),
        options.prompt,
        options.max_alternatives,
        options.word_timestamps,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _pack_alternatives(alternatives: Sequence[Alternative], lead_s: float = 0.0) -> list[Any]:
    """Word times counted from lead_s (the audio's first loud sample)."""

    def words(a: Alternative) -> list[list[Any]]:
        return [[w.text, w.start_s - lead_s, w.end_s - lead_s, w.probability] for w in a.words]

    return [[a.text, a.confidence, words(a)] for a in alternatives]


def _unpack_alternatives(value: Any, shift_s: float = 0.0) -> tuple[Alternative, ...]:
    """Alternatives as stored; word times moved by shift_s (a fuzzy copy that starts later or sooner)."""
    return tuple(
        Alternative(
            str(text),
            float(confidence),
            tuple(
                Word(str(w), max(0.0, float(s) - shift_s), max(0.0, float(e) - shift_s), float(p))
                for w, s, e, p in words
            ),
        )
        for text, confidence, words in value
    )


class RecognitionCache:
    def __init__(
        self,
        keyring: Keyring,
        model_version: str,
        settings: RecognitionCacheSettings | None = None,
        *,
        observer: CacheObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        language: Callable[[str], str] = str.lower,
    ) -> None:
        """model_version: a hash of the weights (entries of another version are never found);
        language: the model's code for a request's language ("en-US" and "en" are one language to the
        model, so to every key)."""
        self._language = language
        self._keyring = keyring
        self._model = model_version
        self._settings = settings or RecognitionCacheSettings()
        self._observer = observer or CacheObserver()
        self._clock = clock
        self._counts: dict[tuple[str, str], _Counts] = {}
        self._tenants: set[str] = set()
        # Per tenant: utterances looked up, and those a tier answered or dropped.
        self._looked: dict[str, int] = {}
        self._answered: dict[str, int] = {}
        # Called with an utterance served from an older model's entry: decode it again and store().
        self.on_stale: Callable[[Probe, npt.NDArray[np.int16]], None] | None = None
        # Called with (tenant, user) before a purge: work held for the user stores nothing after it.
        self.on_purge: Callable[[str, str], None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Fuzzy entry key -> (time, audio key) of its recent hits, for the collision alarm.
        self._recent_hits: dict[str, collections.deque[tuple[float, str]]] = {}

    @property
    def settings(self) -> RecognitionCacheSettings:
        return self._settings

    @property
    def model_version(self) -> str:
        return self._model

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @property
    def uses_fingerprints(self) -> bool:
        s = self._settings
        return s.fuzzy or s.negative or s.self_echo

    # -- keys ---------------------------------------------------------------------------------

    async def _key(self, tier: str, *parts: object) -> str:
        return f"{tier}:{await self._keyring.keyed(_FORMAT, tier, *parts)}"

    async def audio_key(self, tenant_id: str, audio: npt.NDArray[np.int16]) -> str:
        """The utterance's key as results carry it (cache_key): one tenant's name for these samples."""
        digest = hashlib.sha256(trimmed(audio).astype("<i2").tobytes()).hexdigest()
        return await self._keyring.keyed(_FORMAT, "audio", tenant_id, digest)

    async def _owner(self, context: RequestContext) -> str:
        return await self._keyring.owner(context.tenant_id, context.user_id) if context.user_id else ""

    # -- lookups ------------------------------------------------------------------------------

    async def lookup(
        self, audio: npt.NDArray[np.int16], options: DecodeOptions, context: RequestContext
    ) -> Lookup:
        """The answer for one utterance (16 kHz int16), or a MISS to decode and store()."""
        found = await self._lookup(audio, options, context)
        if found.status is not CacheStatus.NONE:
            tenant = self._tenant_label(context.tenant_id)
            self._looked[tenant] = self._looked.get(tenant, 0) + 1
            if found.answered:
                self._answered[tenant] = self._answered.get(tenant, 0) + 1
        return found

    async def _lookup(
        self, audio: npt.NDArray[np.int16], options: DecodeOptions, context: RequestContext
    ) -> Lookup:
        if context.cache_policy is CachePolicy.BYPASS:
            return _NOT_CONSULTED
        start, end = _loud_span(audio)
        samples = audio[start:end]
        duration_s = samples.size / ASR_SAMPLE_RATE_HZ
        if samples.size == 0 or duration_s > self._settings.max_audio_s:
            return _NOT_CONSULTED
        started = self._clock()
        tenant = context.tenant_id
        options = replace(options, language=self._language_of(options.language))
        try:
            audio_key = await self.audio_key(tenant, samples)
            probe = Probe(context, options, audio_key, duration_s, None, start / ASR_SAMPLE_RATE_HZ)
            # A correction has no word timings: a request that asks for them is decoded.
            corrects = self._settings.correction and not options.word_timestamps
            digest = _options_digest(options)
            models = (self._model, *self._settings.stale_models) if self._settings.exact else ()
            keys = [
                await self._correction_key(tenant, audio_key, options.language) if corrects else "",
                await self._recent_key(tenant) if self._settings.self_echo else "",
                *[await self._key(EXACT, tenant, audio_key, model, digest) for model in models],
            ]
            # One round trip for the tiers that need no fingerprint, and the replies to listen for.
            read = await self._keyring.read_many("recognition", [k for k in keys if k])
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, decoding uncached: %s", exc)
            return _NOT_CONSULTED
        answers = iter(read)
        correction = next(answers) if keys[0] else None
        recent = next(answers) if keys[1] else None
        exact, *stale = list(answers) or [None]
        if keys[0]:
            text = _correction_text(correction)
            self._count(CORRECTION, tenant, text is not None, started)
            if text is not None:
                return Lookup(CacheStatus.CORRECTION, (Alternative(text, 1.0),), options.tier, probe)
        if models:
            answer = self._answer(CacheStatus.EXACT, exact, probe)
            kept = next((o for o in stale if self._answer(CacheStatus.EXACT, o, probe)), None)
            older = None
            if answer is None and kept is not None:
                older = self._answer(CacheStatus.EXACT, kept, probe)
            self._count(EXACT, tenant, (answer or older) is not None, started, exact if answer else kept)
            if answer is not None:
                return answer
            if older is not None:
                if self.on_stale is not None and context.cache_policy is CachePolicy.USE:
                    self.on_stale(probe, audio)
                return replace(older, stale=True)
        if not self.uses_fingerprints:
            return Lookup(CacheStatus.MISS, probe=probe)
        printed = await asyncio.to_thread(Printed.of, samples)
        probe = replace(probe, print=printed)
        try:
            found = await self._fingerprint_tiers(probe, recent, started)
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, decoding uncached: %s", exc)
            found = None
        return found or Lookup(CacheStatus.MISS, probe=probe)

    def _index_groups(self, probe: Probe) -> list[tuple[str, tuple[object, ...], tuple[str, ...]]]:
        """The fingerprint indexes a lookup reads: (index, scope, the tiers whose entries it lists)."""
        s, options, tenant = self._settings, probe.options, probe.context.tenant_id
        groups: list[tuple[str, tuple[object, ...], tuple[str, ...]]] = []
        prints = tuple(t for t, on in ((NEGATIVE, s.negative), (FUZZY, s.fuzzy)) if on)
        if prints:
            groups.append((_PRINTS, (tenant, self._model, _options_digest(options)), prints))
        if s.fuzzy and s.correction and not options.word_timestamps:
            groups.append((CORRECTION, (tenant, options.language), (CORRECTION,)))
        return groups

    async def _fingerprint_tiers(self, probe: Probe, recent: Opened | None, started: float) -> Lookup | None:
        """Self-echo, negative, correction and fuzzy in three round trips: the replies' prints with
        every index's buckets, then the candidates the buckets vote for; one verification off the loop."""
        tenant, printed = probe.context.tenant_id, probe.print
        assert printed is not None
        if printed.print.frames.size == 0:
            return None
        replies = _recent_replies(recent) if self._settings.self_echo else []
        groups = self._index_groups(probe)
        buckets = [await self._bucket_keys(index, scope, printed.probe_ids) for index, scope, _ in groups]
        every_bucket = [b for group in buckets for b in group]
        found = await self._keyring.read_many("recognition", [*replies, *every_bucket])
        prints = [
            o.value.get("print") for o in found[: len(replies)] if o is not None and isinstance(o.value, dict)
        ]
        wanted: dict[str, list[str]] = {}  # tier -> its candidates, the most votes first
        at = len(replies)
        for (_, _, tiers), group in zip(groups, buckets, strict=True):
            votes: collections.Counter[str] = collections.Counter()
            for opened in found[at : at + len(group)]:
                if opened is not None and isinstance(opened.value, list):
                    votes.update(m for m in opened.value if isinstance(m, str))
            at += len(group)
            for tier in tiers:
                mine = [key for key, _ in votes.most_common() if key.startswith(f"{tier}:")]
                wanted[tier] = mine[:_CANDIDATES]
        order = [t for t in (NEGATIVE, CORRECTION, FUZZY) if t in wanted]
        keys = [key for tier in order for key in wanted[tier]]
        entries = (
            dict(zip(keys, await self._keyring.read_many("recognition", keys), strict=True)) if keys else {}
        )
        candidates = [
            [
                (k, o.value)
                for k in wanted[tier]
                if (o := entries.get(k)) is not None and isinstance(o.value, dict)
            ]
            for tier in order
        ]
        heard, best = await asyncio.to_thread(_verify_all, printed.print, prints, candidates)
        if self._settings.self_echo:
            self._count(SELF_ECHO, tenant, heard, started)
            if heard:
                return Lookup(CacheStatus.SELF_ECHO, tier=probe.options.tier, probe=probe)
        for tier, hit in zip(order, best, strict=True):
            if tier == CORRECTION:
                text = None if hit is None else _correction_text(hit[0])
                if text is not None:
                    self._count(CORRECTION, tenant, True, started, request=False)
                    fixed = (Alternative(text, 1.0),)
                    return Lookup(CacheStatus.CORRECTION, fixed, probe.options.tier, probe)
                continue  # counted with the exact-key lookup
            self._count(tier, tenant, hit is not None, started, None if hit is None else hit[0])
            if hit is None:
                continue
            if tier == NEGATIVE:
                return Lookup(CacheStatus.NEGATIVE, tier=probe.options.tier, probe=probe)
            value, entry_key, match = hit
            self._watch_collisions(tenant, entry_key, probe.audio_key)
            # Both prints start at their audio's first loud sample: the copy starts that much later.
            shift_s = match.offset_frames * fp.HOP_MS / 1000
            return self._answer(CacheStatus.FUZZY, value, probe, shift_s=shift_s)
        return None

    def _answer(self, status: CacheStatus, entry: Any, probe: Probe, shift_s: float = 0.0) -> Lookup | None:
        """The lookup an entry answers (an Opened, or the value itself); None for an entry that is
        not a recognition answer (another layout): a miss."""
        value = entry.value if isinstance(entry, Opened) else entry
        if not isinstance(value, dict):
            return None
        try:
            # Stored word times count from the first loud sample; this request's audio starts earlier.
            alternatives = _unpack_alternatives(value["alternatives"], shift_s - probe.lead_s)
            tier = Tier(value["tier"])
        except (KeyError, TypeError, ValueError):
            log.warning("a recognition cache entry of another layout is a miss")
            return None
        return Lookup(status, alternatives, tier, probe)

    async def _correction_key(self, tenant: str, audio_key: str, language: str) -> str:
        return await self._key(CORRECTION, tenant, audio_key, language)

    def _language_of(self, language: str) -> str:
        try:
            return self._language(language or "en")
        except InvalidInput:  # checked before any lookup; a language the model lacks keys as given
            return language

    # -- encoder outputs ----------------------------------------------------------------------

    async def _component_key(self, probe: Probe, tier: Tier) -> str:
        return await self._key(COMPONENT, probe.context.tenant_id, probe.audio_key, self._model, tier.value)

    async def encoder_output(self, probe: Probe, tier: Tier) -> npt.NDArray[np.float32] | None:
        """The encoder output kept for this audio on this tier's window (a repeat with other decode
        options skips the encoder), or None."""
        if not self._settings.component:
            return None
        started = self._clock()
        try:
            opened = await self._keyring.read(COMPONENT, await self._component_key(probe, tier))
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, encoding uncached: %s", exc)
            return None
        array = None
        if opened is not None and isinstance(opened.value, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                rows, width = (int(n) for n in opened.value["shape"])
                array = np.frombuffer(bytes(opened.value["data"]), "<f4").reshape(rows, width)
        self._count(COMPONENT, probe.context.tenant_id, array is not None, started)
        return array

    async def store_encoder_output(self, probe: Probe, tier: Tier, output: npt.NDArray[np.float32]) -> None:
        context = probe.context
        if not self._settings.component or context.cache_policy is not CachePolicy.USE or output.ndim != 2:
            return
        value = {"shape": list(output.shape), "data": output.astype("<f4").tobytes()}
        try:
            key = await self._component_key(probe, tier)
            ttl_s = self._settings.component_ttl_s
            await self._keyring.write(key, value, ttl_s=ttl_s, owner=await self._owner(context))
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, not storing: %s", exc)

    # -- the fingerprint index ----------------------------------------------------------------

    async def _bucket_keys(self, tier: str, scope: tuple[object, ...], ids: Sequence[int]) -> list[str]:
        """Under "<tier>.index:", apart from the entries (GetStats counts a tier's entries by prefix). One
        HMAC names the scope; each bucket is an HMAC under that (a hundred buckets a lookup)."""
        index = f"{tier}.index"
        secret = bytes.fromhex(await self._keyring.keyed(_FORMAT, index, *scope))
        return [f"{index}:{hmac.digest(secret, i.to_bytes(8, 'little'), 'sha256').hex()}" for i in ids]

    async def _index(
        self, tier: str, scope: tuple[object, ...], printed: Printed, entry_key: str, ttl_s: float
    ) -> None:
        """Adds an entry to the buckets of its fingerprint (read, add, write: a concurrent add by
        another replica may drop one member, which costs a miss, never a wrong answer)."""
        buckets = await self._bucket_keys(tier, scope, printed.index_ids)
        found = await self._keyring.read_many(tier, buckets)
        cap = self._settings.bucket_members
        writes = []
        for bucket, opened in zip(buckets, found, strict=True):
            old = opened.value if opened is not None and isinstance(opened.value, list) else []
            members = [entry_key, *(m for m in old if isinstance(m, str) and m != entry_key)][:cap]
            writes.append((bucket, members))
        await self._keyring.write_many(writes, ttl_s=ttl_s)

    # -- storing ------------------------------------------------------------------------------

    async def store(
        self, probe: Probe, decoded: WindowResult, tier: Tier, decode_s: float, *, index_later: bool = False
    ) -> None:
        """Keeps the model's answer for an utterance that missed (nothing under DO_NOT_STORE). The exact
        entry is written before this returns; the fingerprint tiers' entries and buckets too, or, with
        index_later, in the background (flush() waits for them): a final need not wait for its index."""
        context = probe.context
        if context.cache_policy is not CachePolicy.USE:
            return
        self._count_miss_latency(probe, decode_s)
        tenant, s = context.tenant_id, self._settings
        digest = _options_digest(probe.options)
        printed = probe.print if probe.print is not None and probe.print.print.frames.size else None
        value: dict[str, Any] = {"decode_s": decode_s}
        tier_of_print = ""
        try:
            owner = await self._owner(context)
            if decoded.alternatives:
                said = _pack_alternatives(decoded.alternatives, probe.lead_s)
                value |= {"alternatives": said, "tier": tier.value}
                if s.exact:
                    key = await self._key(EXACT, tenant, probe.audio_key, self._model, digest)
                    await self._keyring.write(key, value, ttl_s=s.exact_ttl_s, owner=owner)
                tier_of_print = FUZZY if s.fuzzy else ""
            elif s.negative:
                tier_of_print = NEGATIVE
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, not storing: %s", exc)
            return
        if not tier_of_print or printed is None:
            return
        indexed = self._add_print(tier_of_print, probe, printed, value, owner)
        if index_later:
            await self._later(indexed)
        else:
            await indexed

    async def _add_print(
        self, tier: str, probe: Probe, printed: Printed, value: dict[str, Any], owner: str
    ) -> None:
        tenant = probe.context.tenant_id
        digest = _options_digest(probe.options)
        ttl_s = self._settings.fuzzy_ttl_s if tier == FUZZY else self._settings.negative_ttl_s
        try:
            entry = await self._key(tier, "entry", tenant, probe.audio_key, self._model, digest)
            printed_value = {**value, "print": printed.print.to_bytes()}
            await self._keyring.write(entry, printed_value, ttl_s=ttl_s, owner=owner)
            await self._index(_PRINTS, (tenant, self._model, digest), printed, entry, ttl_s)
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, not storing: %s", exc)

    async def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs work in the background, tracked; beyond _MAX_BACKGROUND at once, at once (backpressure)."""
        if len(self._background) >= _MAX_BACKGROUND:
            await work
            return
        task = asyncio.create_task(work, name="asr-cache-index")
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("storing a fingerprint failed: %s", type(task.exception()).__name__)

    async def flush(self) -> None:
        """Waits for the writes in the background now (a purge must not be followed by one of them);
        writes begun meanwhile are not waited for, so a busy server's purge still returns."""
        await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        """Finishes the background writes, for at most a few seconds, then cancels what is left."""
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.flush()
        except TimeoutError:
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)

    async def correct(
        self,
        context: RequestContext,
        language: str,
        text: str,
        *,
        audio: npt.NDArray[np.int16] | None = None,
        audio_key: str = "",
    ) -> None:
        """Keeps a user's corrected transcript for an utterance, by its audio (16 kHz int16) or by the
        cache_key a result carried. Raises InvalidInput, StoreUnavailable."""
        text = " ".join(text.split())
        if not text:
            raise InvalidInput("corrected_transcript is empty")
        if len(text) > _MAX_CORRECTION_CHARS:
            raise InvalidInput(f"corrected_transcript is longer than {_MAX_CORRECTION_CHARS} characters")
        if not self._settings.correction:
            raise NotImplementedCapability("SubmitCorrection: the correction tier is off (--asr-cache-tiers)")
        if context.cache_policy is not CachePolicy.USE:
            raise InvalidInput("a correction is stored: its cache_policy must be USE (or unspecified)")
        printed = None
        if audio is not None:
            samples = trimmed(audio)
            if samples.size == 0:
                raise InvalidInput("the audio of the correction is silent")
            if samples.size > self._settings.max_audio_s * ASR_SAMPLE_RATE_HZ:
                raise LimitExceeded(f"the audio of a correction is at most {self._settings.max_audio_s:g} s")
            audio_key = await self.audio_key(context.tenant_id, samples)
            if self._settings.fuzzy:
                printed = await asyncio.to_thread(Printed.of, samples)
        elif not _AUDIO_KEY.fullmatch(audio_key):
            raise InvalidInput("a correction needs the audio, or a result's cache_key (64 hex digits)")
        language = self._language_of(language)
        key = await self._correction_key(context.tenant_id, audio_key, language)
        value: dict[str, Any] = {"text": text}
        if printed is not None and printed.print.frames.size:
            value["print"] = printed.print.to_bytes()
        ttl_s = self._settings.correction_ttl_s
        await self._keyring.write(key, value, ttl_s=ttl_s, owner=await self._owner(context))
        if printed is not None and "print" in value:
            await self._index(CORRECTION, (context.tenant_id, language), printed, key, ttl_s)

    # -- self-echo ----------------------------------------------------------------------------

    async def _recent_key(self, tenant: str) -> str:
        return await self._key(SELF_ECHO, "recent", tenant)

    async def remember_reply(
        self, context: RequestContext, reply_id: str, audio: npt.NDArray[np.int16] | None
    ) -> bool:
        """Listens for a reply synthesized for the tenant (16 kHz int16) for self_echo_ttl_s. With
        audio None, a reply remembered before under the same reply_id is listened for again (a
        cached reply played once more); False when it is not remembered any more."""
        s = self._settings
        if not s.self_echo or context.cache_policy is not CachePolicy.USE:
            return True
        tenant = context.tenant_id
        try:
            entry = await self._key(SELF_ECHO, "reply", tenant, reply_id)
            if audio is None:
                known = await self._keyring.read(SELF_ECHO, entry)
                if known is None:
                    return False
                # Listened for as long again: the print's own lifetime too, not only the list's.
                owner = await self._owner(context)
                await self._keyring.write(entry, known.value, ttl_s=s.self_echo_ttl_s, owner=owner)
            else:
                reply = await asyncio.to_thread(fp.fingerprint, audio)
                if reply.frames.size == 0:
                    return True
                value = {"print": reply.to_bytes()}
                await self._keyring.write(
                    entry, value, ttl_s=s.self_echo_ttl_s, owner=await self._owner(context)
                )
            recent_key = await self._recent_key(tenant)
            opened = await self._keyring.read(SELF_ECHO, recent_key)
            now = time.time()
            old = opened.value if opened is not None and isinstance(opened.value, list) else []
            kept = [[entry, now + s.self_echo_ttl_s]]
            kept += [m for m in old if _live(m, now) and m[0] != entry]
            await self._keyring.write(recent_key, kept[: s.echo_replies], ttl_s=s.self_echo_ttl_s)
        except StoreUnavailable as exc:
            log.warning("recognition cache unavailable, not listening for self-echo: %s", exc)
        return True

    # -- accounting ---------------------------------------------------------------------------

    def _counts_of(self, tier: str, tenant: str) -> _Counts:
        counts = self._counts.get((tier, tenant))
        if counts is None:
            counts = self._counts[(tier, tenant)] = _Counts()
        return counts

    def _tenant_label(self, tenant: str) -> str:
        """The tenant's name in counters and metric labels; past _MAX_TENANTS tenants (ids a client may
        make up when no API keys are configured), one row for the rest."""
        if tenant in self._tenants or len(self._tenants) < _MAX_TENANTS:
            self._tenants.add(tenant)
            return tenant
        return OTHER_TENANTS

    def _count(
        self, tier: str, tenant: str, hit: bool, started: float, opened: Any = None, *, request: bool = True
    ) -> None:
        """request False: a hit of a tier whose lookup was counted already."""
        tenant = self._tenant_label(tenant)
        counts = self._counts_of(tier, tenant)
        counts.requests += request
        latency_s = self._clock() - started
        saved_s = 0.0
        if hit:
            counts.hits += 1
            value = getattr(opened, "value", opened)
            decode_s = value.get("decode_s") if isinstance(value, dict) else None
            if isinstance(decode_s, (int, float)) and math.isfinite(decode_s) and decode_s > 0:
                saved_s = float(decode_s)
            counts.saved_s += saved_s
            counts.hit_latency_s.append(latency_s)
        self._observer.lookup(tier, tenant, hit, latency_s, saved_s)

    def _count_miss_latency(self, probe: Probe, decode_s: float) -> None:
        self._counts_of(EXACT, self._tenant_label(probe.context.tenant_id)).miss_latency_s.append(decode_s)

    def _watch_collisions(self, tenant: str, entry_key: str, audio_key: str) -> None:
        """One fuzzy entry answering many different recordings at once is a fingerprint collision
        (or an attack on one): logged and counted, never silent."""
        s = self._settings
        now = self._clock()
        seen = self._recent_hits.get(entry_key)
        if seen is None:
            if len(self._recent_hits) >= 4096:
                self._recent_hits.pop(next(iter(self._recent_hits)))
            seen = self._recent_hits[entry_key] = collections.deque(maxlen=4 * s.collision_recordings)
        seen.append((now, audio_key))
        recordings = {a for t, a in seen if t >= now - s.collision_window_s}
        if len(recordings) >= s.collision_recordings:
            label = self._tenant_label(tenant)
            self._counts_of(FUZZY, label).collisions += 1
            self._observer.collision(FUZZY, label)
            log.warning(
                "fuzzy cache collision: one entry answered %d different recordings within %.0f s",
                len(recordings),
                s.collision_window_s,
            )
            seen.clear()

    def tenant_stats(self, tenant_id: str | None = None) -> list[TierTenantStats]:
        """Counters of this process, per tier and tenant (one tenant's when tenant_id is given)."""
        rows = []
        for (tier, tenant), c in sorted(self._counts.items()):
            if tenant_id is not None and tenant != tenant_id:
                continue
            rows.append(
                TierTenantStats(
                    tier,
                    tenant,
                    c.requests,
                    c.hits,
                    c.saved_s,
                    _median_ms(c.hit_latency_s),
                    _median_ms(c.miss_latency_s),
                    c.collisions,
                )
            )
        return rows

    def bypass_ratio(self, tenant_id: str | None = None) -> float:
        """Utterances answered (or dropped) without the model, of those looked up."""
        tenants = list(self._looked) if tenant_id is None else [tenant_id]
        looked = sum(self._looked.get(t, 0) for t in tenants)
        answered = sum(self._answered.get(t, 0) for t in tenants)
        return answered / looked if looked else 0.0

    async def entries(self) -> list[tuple[str, StoreStats]]:
        rows = []
        for tier in TIERS:
            try:
                found = await self._keyring.store.stats(f"{tier}:")
            except StoreUnavailable:
                found = StoreStats(-1, -1)
            rows.append((tier, found))
        return rows

    async def purge_user(self, tenant_id: str, user_id: str) -> int:
        """Every record of the user in every tier (the store's owner index); what this process still
        had to write of theirs is written first (and then removed), or dropped."""
        if self.on_purge is not None:
            self.on_purge(tenant_id, user_id)
        await self.flush()
        return await self._keyring.store.purge_owner(await self._keyring.owner(tenant_id, user_id))


def _correction_text(entry: Any) -> str | None:
    value = entry.value if isinstance(entry, Opened) else entry
    text = value.get("text") if isinstance(value, dict) else None
    return text if isinstance(text, str) and text else None


def _median_ms(values: collections.deque[float]) -> float:
    return float(np.median(np.asarray(values))) * 1000 if values else 0.0


def _recent_replies(recent: Opened | None) -> list[str]:
    """The entry keys of the replies still listened for, from a tenant's recent list."""
    if recent is None or not isinstance(recent.value, list):
        return []
    now = time.time()
    return [str(m[0]) for m in recent.value if _live(m, now)]


def _live(member: Any, now: float) -> bool:
    """A [entry key, listened for until] pair of a recent list, still in time."""
    return (
        isinstance(member, list)
        and len(member) == 2
        and isinstance(member[0], str)
        and isinstance(member[1], (int, float))
        and member[1] > now
    )


Hit = tuple[dict[str, Any], str, fp.Match]


def _verify_all(
    printed: fp.Fingerprint, replies: list[Any], candidates: list[list[tuple[str, dict[str, Any]]]]
) -> tuple[bool, list[Hit | None]]:
    """Whether the print lies inside one of the replies, and each tier's best verified candidate."""
    heard = False
    for data in replies:
        with contextlib.suppress(ValueError, TypeError):
            if fp.find_within(fp.Fingerprint.from_bytes(bytes(data)), printed) is not None:
                heard = True
                break
    best_of_tiers: list[Hit | None] = []
    for entries in candidates:
        best: Hit | None = None
        for key, value in entries:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                found = fp.match(printed, fp.Fingerprint.from_bytes(bytes(value["print"])))
                if found is not None and (best is None or found.bit_error_rate < best[2].bit_error_rate):
                    best = (value, key, found)
        best_of_tiers.append(best)
    return heard, best_of_tiers
