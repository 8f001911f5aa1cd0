"""Composition root: config → engines → runtime → services → server, and the shutdown order."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import secrets
from typing import Any

import numpy as np
import numpy.typing as npt

from voxwire_server.auth import ApiKeys
from voxwire_server.caches.envelope import KEY_BYTES
from voxwire_server.caches.keyring import Keyring
from voxwire_server.caches.recognition import CacheObserver, Probe, RecognitionCache, RecognitionCacheSettings
from voxwire_server.caches.synthesis import SynthesisCache
from voxwire_server.config import ServerConfig
from voxwire_server.domain import Endpointing, Tier
from voxwire_server.engines.tts import HibariSynthesizer
from voxwire_server.engines.vad import WebRtcVad
from voxwire_server.engines.whisper import WhisperRecognizer, tune_allocator
from voxwire_server.metrics import Telemetry
from voxwire_server.sessions.admission import AdmissionConfig, CallLimits
from voxwire_server.sessions.recognition import RecognitionLimits
from voxwire_server.sessions.resumption import StateSettings, StreamStates
from voxwire_server.sessions.revalidation import Revalidator
from voxwire_server.sessions.runtime import Runtime
from voxwire_server.sessions.synthesis import SynthesisLimits
from voxwire_server.storage import StoreUnavailable, open_state_store, open_store
from voxwire_server.transport.server import GrpcServer, build_server

log = logging.getLogger(__name__)


def build_cache(config: ServerConfig, telemetry: Telemetry) -> SynthesisCache | None:
    if config.cache == "off":
        return None
    store = open_store(
        config.cache, max_bytes=config.cache_memory_mb * 1024 * 1024, timeout_s=config.cache_timeout_ms / 1000
    )
    value_key = config.cache_value_key
    if value_key is None and store.name == "memory":
        # The entries live no longer than this process, so neither need their key.
        value_key = secrets.token_bytes(KEY_BYTES)
    return SynthesisCache(
        store,
        personal_ttl_s=config.tts_cache_ttl_s,
        on_lookup=lambda tier, outcome: telemetry.cache_requests.labels(tier, outcome).inc(),
        key_secret=config.cache_key_secret.encode() or None,
        value_key=value_key,  # None: derived from the key secret
        retired_value_keys=config.cache_value_old_keys,
    )


class _CacheMetrics(CacheObserver):
    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def lookup(self, tier: str, tenant_id: str, hit: bool, latency_s: float, saved_s: float) -> None:
        outcome = "hit" if hit else "miss"
        self._t.cache_requests.labels(tier, outcome).inc()
        self._t.asr_cache_lookups.labels(tier, tenant_id, outcome).inc()
        self._t.asr_cache_lookup_latency.labels(tier, outcome).observe(latency_s)
        if saved_s:
            self._t.asr_cache_saved.labels(tenant_id).inc(saved_s)

    def collision(self, tier: str, tenant_id: str) -> None:
        self._t.asr_cache_collisions.labels(tier, tenant_id).inc()


def build_recognition_cache(
    config: ServerConfig, keyring: Keyring, recognizer: WhisperRecognizer, telemetry: Telemetry
) -> RecognitionCache | None:
    tiers = config.asr_cache_tier_set
    fuzzy = config.asr_cache_fuzzy == "on"
    if not tiers and not fuzzy:
        return None
    settings = RecognitionCacheSettings(
        exact="exact" in tiers,
        correction="correction" in tiers,
        negative="negative" in tiers,
        self_echo="self_echo" in tiers,
        component="component" in tiers,
        fuzzy=fuzzy,
        exact_ttl_s=config.asr_cache_exact_ttl_s,
        fuzzy_ttl_s=config.asr_cache_fuzzy_ttl_s,
        negative_ttl_s=config.asr_cache_negative_ttl_s,
        self_echo_ttl_s=config.asr_cache_self_echo_ttl_s,
        correction_ttl_s=config.asr_cache_correction_ttl_s,
        component_ttl_s=config.asr_cache_component_ttl_s,
        stale_models=tuple(m.strip() for m in config.asr_cache_stale_models.split(",") if m.strip()),
    )
    return RecognitionCache(
        keyring,
        recognizer.model_version,
        settings,
        observer=_CacheMetrics(telemetry),
        language=recognizer.check_language,
    )


def build_stream_states(config: ServerConfig, telemetry: Telemetry) -> StreamStates | None:
    if config.state == "off":
        return None
    store = open_state_store(
        config.state, max_bytes=config.state_memory_mb * 1024 * 1024, timeout_s=config.state_timeout_ms / 1000
    )

    def on_write(outcome: str, size_bytes: int) -> None:
        telemetry.state_writes.labels(outcome).inc()
        if size_bytes:
            telemetry.state_bytes.observe(size_bytes)

    return StreamStates(
        store,
        # Tokens of a process-local store die with it, and so may its secret.
        config.resume_secret.encode() or secrets.token_bytes(32),
        StateSettings(ttl_s=config.state_ttl_s, interval_s=config.state_write_interval_ms / 1000),
        on_write=on_write,
    )


def build_runtime(config: ServerConfig) -> Runtime:
    telemetry = Telemetry()
    return Runtime(
        recognition_limits=RecognitionLimits(
            max_clip_s=config.max_clip_s,
            max_clip_bytes=config.max_request_bytes,
            max_chunk_ms=config.max_chunk_ms,
            queue_chunks=config.stream_queue_chunks,
            partial_interval_ms=config.partial_interval_ms,
            partial_commit_probability=config.partial_commit_probability,
            escalation_confidence=config.escalation_confidence,
            escalation_max_waiting=config.escalation_max_waiting,
            on_escalation=telemetry.escalations.inc,
            accurate_min_utterance_s=config.accurate_min_utterance_s,
            on_long_accurate=telemetry.long_accurate.inc,
            context_gap_s=config.context_gap_s,
            idle_timeout_s=config.stream_idle_timeout_s,
            max_stream_s=config.max_stream_s,
            max_stream_audio_s=config.max_stream_audio_s,
            on_limit=lambda limit: telemetry.stream_limits.labels(limit).inc(),
        ),
        synthesis_limits=SynthesisLimits(
            max_text_chars=config.max_text_chars,
            max_synthesis_s=config.max_synthesis_s,
            max_warmup_items=config.max_warmup_items,
            max_warmup_chars=config.max_warmup_chars,
            stitch_context_words=config.tts_stitch_context_words,
            max_joint_pitch_st=config.tts_joint_max_pitch_st,
            max_joint_step_db=config.tts_joint_max_step_db,
            cache_opus_bit_rate=config.tts_cache_opus_kbps * 1000,
        ),
        endpointing=Endpointing(
            silence_ms=config.silence_ms,
            max_utterance_s=config.max_utterance_s,
            vad_aggressiveness=config.vad_aggressiveness,
            min_speech_ms=config.min_speech_ms,
            pre_roll_ms=config.pre_roll_ms,
        ),
        default_tier=Tier(config.asr_default_tier),
        admission=AdmissionConfig(
            max_streams=config.max_streams,
            max_delay_s=config.admission_max_delay_s,
            top_priority=config.admission_top_priority,
            shed_partials_delay_s=config.shed_partials_delay_s,
            shed_escalation_delay_s=config.shed_escalation_delay_s,
            ramp_streams_per_s=config.admission_ramp_per_s,
            ramp_burst=config.admission_ramp_burst,
        ),
        call_limits={
            kind: CallLimits(
                max_concurrent=getattr(config, f"{kind}_max_concurrent"),
                rate_per_s=getattr(config, f"{kind}_rate_per_s"),
                burst=getattr(config, f"{kind}_burst"),
            )
            for kind in ("recognize", "synthesize", "warmup")
        },
        vad_factory=functools.partial(WebRtcVad, frame_ms=config.vad_frame_ms),
        telemetry=telemetry,
        synthesis_cache=build_cache(config, telemetry),
        stream_states=build_stream_states(config, telemetry),
    )


def _load_engines(config: ServerConfig) -> tuple[WhisperRecognizer, HibariSynthesizer]:
    tune_allocator()
    log.info("workers: ASR %d, TTS %d", config.effective_asr_workers, config.effective_tts_workers)
    recognizer = WhisperRecognizer(
        config.asr_model,
        accurate_model_path=config.asr_accurate_model,
        device=config.asr_device,
        compute_type=config.asr_compute_type,
        cpu_threads=config.asr_cpu_threads,
        accurate_beam_size=config.asr_accurate_beam_size,
        max_batch=config.max_batch,
        max_batch_wait_ms=config.max_batch_wait_ms,
        max_partial_batch=config.max_partial_batch,
        workers=config.effective_asr_workers,
        context_tokens=config.asr_context_tokens,
        min_window_s=config.asr_min_window_s,
        engine=config.asr_engine,
        keep_kv=config.asr_state_kv == "on",
    )
    synthesizer = HibariSynthesizer(
        config.tts_voice, threads=config.tts_threads, workers=config.effective_tts_workers
    )
    recognizer.warm_up()
    synthesizer.warm_up()
    return recognizer, synthesizer


class App:
    """Start: listen with health NOT_SERVING, load and warm the models off the loop, then SERVING.
    Stop: NOT_SERVING → server.stop(grace) → close engines → close the cache store."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.runtime = build_runtime(config)
        self._grpc: GrpcServer | None = None
        self._engines: tuple[WhisperRecognizer, HibariSynthesizer] | None = None
        self._metrics_server: Any = None
        self._revalidator: Revalidator | None = None

    @property
    def port(self) -> int:
        assert self._grpc is not None, "start() first"
        return self._grpc.port

    async def start(self) -> None:
        keys = ApiKeys.load(self.config.api_keys) if self.config.api_keys else None
        if keys is None:
            log.warning(
                "authentication is off: every caller on %s is trusted with every role and the tenant and "
                "user ids it sends (the single-user default; give --api-keys to serve more than one)",
                self.config.listen,
            )
        else:
            log.info("authentication on: %d API keys", len(keys))
        if not self.config.tls_cert:
            if keys is not None and not self.config.listens_on_loopback:
                log.warning(
                    "TLS off on %s: API keys cross the network in the clear (fine behind a proxy that "
                    "terminates TLS on this host; otherwise give --tls-cert and --tls-key)",
                    self.config.listen,
                )
            else:
                log.info("TLS off (plaintext gRPC)")
        self._grpc = build_server(self.config, self.runtime, keys)
        await self._grpc.set_serving(False)
        await self._grpc.server.start()
        log.info("listening on port %d; loading models", self._grpc.port)
        if self.config.metrics_listen:
            self._start_metrics()
        try:
            self._engines = await asyncio.to_thread(_load_engines, self.config)
        except BaseException:
            await self._grpc.server.stop(0)
            raise
        await self._load_cache_key_secret()
        # What start-up made (modules, models' Python state, lexicons) lives as long as the process:
        # out of the collector's sight, a full collection takes ~0 ms instead of 30-40 ms, a pause
        # that every stream on the event loop would otherwise feel now and then.
        gc.freeze()
        cache = self.runtime.synthesis_cache
        recognizer = self._engines[0]
        if cache is not None:
            recognition = build_recognition_cache(
                self.config, cache.keyring, recognizer, self.runtime.telemetry
            )
            if recognition is not None and recognition.settings.stale_models:
                stale = self.runtime.telemetry.asr_cache_stale
                self._revalidator = Revalidator(
                    recognizer,
                    recognition,
                    self.runtime.recognition_limits,
                    on_outcome=lambda outcome: stale.labels(outcome).inc(),
                )
                recognition.on_stale = self._served_stale
                recognition.on_purge = self._revalidator.forget
                self._revalidator.start()
            self.runtime.recognition_cache = recognition
        log.info("recognition model version %s (what cache keys hold)", recognizer.model_version)
        self.runtime.set_engines(*self._engines)
        self.runtime.telemetry.watch_decoder(self._engines[0].batching)
        self.runtime.telemetry.watch_decoder_work(self._engines[0].engine, self._engines[0].decoder_stats)
        await self._grpc.set_serving(True)
        log.info("serving (%s, %s)", self._engines[0].model_name, self._engines[1].model_name)

    async def _load_cache_key_secret(self) -> None:
        """Reads (or makes) the cache key secret before the first request needs it; a store that is
        down now is asked again by the first request."""
        cache = self.runtime.synthesis_cache
        if cache is None:
            return
        if not self.config.cache_key_secret and cache.store.name != "memory":
            log.warning(
                "no --cache-key-secret: cache keys use a secret generated and kept in the cache store, "
                "where a reader of the store can find it; set VOXWIRE_CACHE_KEY_SECRET (the same on "
                "every replica)"
            )
        if not self.config.cache_encryption_key and cache.store.name != "memory":
            if self.config.cache_key_secret:
                log.info(
                    "no --cache-encryption-key: cache values are encrypted under a key derived from "
                    "--cache-key-secret"
                )
            else:
                log.warning(
                    "NO CACHE ENCRYPTION KEY: cache values (synthesized speech, template words) are "
                    "encrypted under a key derived from the secret kept in the cache store itself, so a "
                    "reader of the store can decrypt them; set VOXWIRE_CACHE_ENCRYPTION_KEY (openssl rand "
                    "-base64 32) and VOXWIRE_CACHE_KEY_SECRET, the same on every replica"
                )
        try:
            await cache.key_secret()
        except StoreUnavailable as exc:
            log.warning("cache store unavailable at start-up: %s", exc)

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        host, _, port = self.config.metrics_listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.runtime.telemetry.registry)
        self._metrics_server = server

    def _served_stale(self, probe: Probe, audio: npt.NDArray[np.int16]) -> None:
        self.runtime.telemetry.asr_cache_stale.labels("served").inc()
        if self._revalidator is not None:
            self._revalidator.submit(probe, audio)

    async def wait(self) -> None:
        assert self._grpc is not None
        await self._grpc.server.wait_for_termination()

    async def stop(self, grace_s: float | None = None) -> None:
        """The drain: health NOT_SERVING and new calls UNAVAILABLE with the port still open; open
        streams send the finals of what they heard and end (UNAVAILABLE: reconnect elsewhere); other
        calls may finish. The port closes once nothing is in flight (after at least drain_notice_s),
        or at the end of the grace period, when what is left is cancelled."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        notice = min(self.config.drain_notice_s, grace)
        self.runtime.begin_drain()
        if self._grpc is not None:
            await self._grpc.set_serving(False)
            started = asyncio.get_running_loop().time()
            guard = self._grpc.guard
            log.info("draining: %d calls in flight, at most %.1f s", guard.in_flight, grace)
            idle = await guard.wait_idle(grace)
            if not idle:
                log.warning(
                    "drain: %d calls still running after %.1f s are cancelled", guard.in_flight, grace
                )
            left = notice - (asyncio.get_running_loop().time() - started)
            if left > 0:
                await asyncio.sleep(left)
            await self._grpc.server.stop(0)
        if self._revalidator is not None:
            await self._revalidator.aclose()
            self._revalidator = None
        if self._engines is not None:
            for engine in self._engines:
                await asyncio.to_thread(engine.close)
            self._engines = None
        if self.runtime.recognition_cache is not None:
            await self.runtime.recognition_cache.aclose()
        if self.runtime.synthesis_cache is not None:
            await self.runtime.synthesis_cache.store.aclose()
        if self.runtime.stream_states is not None:
            await self.runtime.stream_states.store.aclose()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        log.info("stopped")
