from __future__ import annotations

import os

import pytest

from voxwire_server.config import MAX_AUTO_ASR_WORKERS, MAX_AUTO_TTS_WORKERS, ServerConfig, load_config
from voxwire_server.errors import ConfigError


def test_defaults_are_valid() -> None:
    config = load_config([], environ={})
    assert config == ServerConfig()
    assert config.listen == "127.0.0.1:50051"


def test_flags_win_over_environment() -> None:
    env = {"VOXWIRE_LISTEN": "0.0.0.0:6000", "VOXWIRE_SILENCE_MS": "800"}
    config = load_config(["--listen", "127.0.0.1:7000"], environ=env)
    assert config.listen == "127.0.0.1:7000"
    assert config.silence_ms == 800


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nowhere"], "listen must be HOST:PORT"),
        (["--silence-ms", "abc"], "silence_ms: expected int"),
        (["--vad-aggressiveness", "5"], "vad_aggressiveness must be 0..3"),
        (["--max-utterance-s", "45"], "at most 29"),
        (["--escalation-confidence", "2"], "escalation_confidence must be 0..1"),
        (["--accurate-min-utterance-s", "0.5"], r"accurate_min_utterance_s must be 0 \(never\) or 1..30"),
        (["--partial-commit-probability", "1.5"], r"partial_commit_probability must be 0..1"),
        (["--asr-context-tokens", "300"], "asr_context_tokens must be 0..223"),
        (["--context-gap-s", "-1"], "context_gap_s must be 0 or more"),
        (["--asr-min-window-s", "1"], "asr_min_window_s must be 2..30"),
        (["--asr-model", "/does/not/exist"], "not a CTranslate2 model directory"),
        (["--asr-default-tier", "huge"], "fast or accurate"),
        (["--max-streams", "0"], "max_streams must be positive"),
        (["--asr-workers", "-1"], "asr_workers must not be negative"),
        (["--tts-workers", "-2"], "tts_workers must not be negative"),
        (["--max-message-mb", "-1"], "max_message_mb must not be negative"),
        (["--max-clip-s", "20000"], "over gRPC's 2 GiB message limit"),
        (["--asr-cache-tiers", "exact,fuzzy"], "unknown tier 'fuzzy'.*--asr-cache-fuzzy on"),
        (["--asr-cache-tiers", "exact,speedy"], "unknown tier 'speedy'"),
        (["--asr-cache-fuzzy", "yes"], "asr_cache_fuzzy must be on or off"),
        (["--asr-engine", "onnx"], "asr_engine must be ctranslate2 or torch"),
        (["--asr-state-kv", "maybe"], "asr_state_kv must be on or off"),
        (["--asr-cache-exact-ttl-s", "0"], "asr_cache_exact_ttl_s must be positive"),
        (["--asr-cache-self-echo-ttl-s", "-5"], "asr_cache_self_echo_ttl_s must be positive"),
    ],
)
def test_bad_values_raise_config_error(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, environ={})


def test_bad_environment_value_is_reported_by_name() -> None:
    with pytest.raises(ConfigError, match="max_clip_s"):
        load_config([], environ={"VOXWIRE_MAX_CLIP_S": "ten"})


def test_workers_default_to_one_per_usable_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert ServerConfig().effective_asr_workers == max(1, min(MAX_AUTO_ASR_WORKERS, cores))
    assert ServerConfig(asr_workers=3).effective_asr_workers == 3
    assert ServerConfig(asr_device="cuda").effective_asr_workers == 1
    assert ServerConfig().effective_tts_workers == max(1, min(MAX_AUTO_TTS_WORKERS, cores))
    assert ServerConfig(tts_workers=1).effective_tts_workers == 1


def test_the_request_limit_holds_a_clip_of_max_clip_s() -> None:
    # A whole --max-clip-s clip of the largest raw audio accepted (48 kHz stereo LINEAR16) fits.
    assert ServerConfig().max_request_bytes >= 600 * 48000 * 2 * 2
    assert ServerConfig(max_clip_s=10).max_request_bytes >= 10 * 48000 * 2 * 2
    assert ServerConfig(max_clip_s=10).max_request_bytes < ServerConfig().max_request_bytes
    assert ServerConfig(max_message_mb=5).max_request_bytes == 5 << 20
    # gRPC's own limit is above it, so the server answers an oversized request itself.
    config = ServerConfig(max_clip_s=10)
    assert config.grpc_message_limit_bytes > config.max_request_bytes


def test_the_cache_key_secret_is_checked_and_kept_out_of_repr() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_config(["--cache-key-secret", "short"], environ={})
    config = load_config([], environ={"VOXWIRE_CACHE_KEY_SECRET": "a long enough secret value"})
    assert config.cache_key_secret == "a long enough secret value"
    assert "a long enough secret value" not in repr(config)


def test_recognition_cache_tiers_parse_to_a_set() -> None:
    assert load_config([]).asr_cache_tier_set == {"correction", "exact", "negative"}
    config = load_config(["--asr-cache-tiers", " exact , self_echo,component ", "--asr-cache-fuzzy", "on"])
    assert config.asr_cache_tier_set == {"exact", "self_echo", "component"}
    assert load_config(["--asr-cache-tiers", ""]).asr_cache_tier_set == frozenset()
