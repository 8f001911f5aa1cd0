"""The cache value envelope (AES-256-GCM bound to the store key), its keys in config, and how
build_cache picks the key with and without one configured."""

from __future__ import annotations

import base64

import pytest

from voxwire_server.app import build_cache
from voxwire_server.caches.envelope import (
    HEADER_BYTES,
    KEY_BYTES,
    NONCE_BYTES,
    OVERHEAD_BYTES,
    NotAuthentic,
    Sealer,
    UnknownKey,
    derive_key,
    key_id,
)
from voxwire_server.caches.keyring import keyed
from voxwire_server.caches.synthesis import CachedAudio, SynthesisCache
from voxwire_server.config import ServerConfig, load_config
from voxwire_server.domain import RequestContext
from voxwire_server.errors import ConfigError
from voxwire_server.metrics import Telemetry

KEY = bytes(range(32))
OTHER = bytes(range(50, 82))
STORE_KEY = "tts.phrase:u:" + "ab" * 32
PLAIN = b"the audio of a sentence somebody was told" * 10


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# -- the envelope ----------------------------------------------------------------------------------


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    sealer = Sealer(KEY)
    first, second = sealer.seal(PLAIN, STORE_KEY), sealer.seal(PLAIN, STORE_KEY)
    assert len(first) == len(PLAIN) + OVERHEAD_BYTES
    assert first[:2] == b"\xc2\x01" and first[2:HEADER_BYTES] == key_id(KEY) == sealer.key_id
    assert (
        first[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES] != second[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    )
    assert first != second
    assert PLAIN[:16] not in first
    assert sealer.open(first, STORE_KEY) == (PLAIN, True)
    assert sealer.open(second, STORE_KEY) == (PLAIN, True)
    assert sealer.open(sealer.seal(b"", STORE_KEY), STORE_KEY) == (b"", True)


@pytest.mark.parametrize(
    "where",
    [0, 1, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + NONCE_BYTES, -17, -1],
    ids=["magic", "version", "key-id", "nonce", "ciphertext", "ciphertext-end", "tag"],
)
def test_any_flipped_bit_is_not_authentic(where: int) -> None:
    sealer = Sealer(KEY, [OTHER])
    sealed = bytearray(sealer.seal(PLAIN, STORE_KEY))
    sealed[where] ^= 0x01
    with pytest.raises((NotAuthentic, UnknownKey)):  # a changed key id names no key held
        sealer.open(bytes(sealed), STORE_KEY)


@pytest.mark.parametrize("cut", [1, 16, OVERHEAD_BYTES, len(PLAIN) + OVERHEAD_BYTES - 1])
def test_a_truncated_value_is_not_authentic(cut: int) -> None:
    sealed = Sealer(KEY).seal(PLAIN, STORE_KEY)
    with pytest.raises(NotAuthentic):
        Sealer(KEY).open(sealed[:cut], STORE_KEY)


def test_bytes_that_were_never_sealed_are_not_authentic() -> None:
    for junk in (b"", b"garbage", b"\xc1\x01" + b"\x00" * 64, b"\x93\x01\x02\x03"):
        with pytest.raises(NotAuthentic):
            Sealer(KEY).open(junk, STORE_KEY)


def test_a_value_moved_under_another_store_key_is_not_authentic() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal(PLAIN, STORE_KEY)
    for elsewhere in ("tts.phrase:u:" + "cd" * 32, "tts.phrase:g:" + "ab" * 32, "tts.prefix:u:" + "ab" * 32):
        with pytest.raises(NotAuthentic):
            sealer.open(sealed, elsewhere)


def test_the_wrong_key_is_a_miss_even_with_its_key_id_forged() -> None:
    sealed = Sealer(KEY).seal(PLAIN, STORE_KEY)
    with pytest.raises(UnknownKey, match="key id"):
        Sealer(OTHER).open(sealed, STORE_KEY)
    forged = sealed[:2] + key_id(OTHER) + sealed[HEADER_BYTES:]
    with pytest.raises(NotAuthentic):
        Sealer(OTHER).open(forged, STORE_KEY)


def test_rotation_retired_keys_open_only_and_new_values_use_the_current_key() -> None:
    old = Sealer(KEY).seal(PLAIN, STORE_KEY)
    rotated = Sealer(OTHER, [KEY])
    assert rotated.open(old, STORE_KEY) == (PLAIN, False)  # opened, but under a retired key
    new = rotated.seal(PLAIN, STORE_KEY)
    assert new[2:HEADER_BYTES] == key_id(OTHER) != key_id(KEY)
    assert rotated.open(new, STORE_KEY) == (PLAIN, True)
    with pytest.raises(UnknownKey):
        Sealer(KEY).open(new, STORE_KEY)  # a replica with only the old key cannot read it
    with pytest.raises(UnknownKey):
        Sealer(OTHER).open(old, STORE_KEY)  # the old key dropped: its values are misses
    # Listing the current key among the retired changes nothing.
    assert Sealer(OTHER, [OTHER, KEY]).open(new, STORE_KEY) == (PLAIN, True)


def test_keys_must_be_32_bytes() -> None:
    for bad in (b"", b"x" * 16, b"x" * 33):
        with pytest.raises(ValueError, match="32 bytes"):
            Sealer(bad)
        with pytest.raises(ValueError, match="32 bytes"):
            Sealer(KEY, [bad])


def test_derived_keys_are_stable_distinct_and_not_the_secret() -> None:
    secret = b"a cache key secret of some length"
    assert derive_key(secret) == derive_key(secret)
    assert len(derive_key(secret)) == KEY_BYTES
    assert derive_key(secret) != derive_key(secret + b"!")
    assert derive_key(secret) != secret[:KEY_BYTES]
    assert key_id(KEY) != key_id(OTHER) and len(key_id(KEY)) == 8


# -- config ----------------------------------------------------------------------------------------


def test_the_encryption_keys_are_decoded_and_kept_out_of_repr() -> None:
    config = load_config(
        [],
        environ={
            "VOXWIRE_CACHE_ENCRYPTION_KEY": b64(KEY),
            "VOXWIRE_CACHE_ENCRYPTION_OLD_KEYS": f" {b64(OTHER)}, ,{base64.urlsafe_b64encode(KEY).decode()},",
        },
    )
    assert config.cache_value_key == KEY
    assert config.cache_value_old_keys == (OTHER, KEY)
    assert b64(KEY) not in repr(config) and b64(OTHER) not in repr(config)
    assert ServerConfig().cache_value_key is None and ServerConfig().cache_value_old_keys == ()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--cache-encryption-key", "not base64 at all!", "cache_encryption_key is not valid base64"),
        ("--cache-encryption-key", b64(b"sixteen bytes..."), "cache_encryption_key must be the base64 of 32"),
        ("--cache-encryption-key", b64(KEY + b"x"), "got 33"),
        ("--cache-encryption-old-keys", f"{b64(KEY)},{b64(b'short')}", "cache_encryption_old_keys item 2"),
        ("--cache-encryption-old-keys", f"{b64(KEY)},***", "item 2 is not valid base64"),
    ],
)
def test_a_bad_encryption_key_is_a_config_error_that_does_not_echo_it(
    flag: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config([flag, value], environ={})
    assert value not in str(info.value) and "openssl rand -base64 32" in str(info.value)


# -- build_cache: which key -----------------------------------------------------------------------

ALICE = RequestContext(tenant_id="acme", user_id="alice")
AUDIO = CachedAudio(chunks=(b"\x01\x02",), durations_ms=(10,), sample_rate_hz=24000)
SECRET = "a cache key secret for the tests"


async def test_a_configured_key_seals_the_values() -> None:
    cache = build_cache(ServerConfig(cache_key_secret=SECRET, cache_encryption_key=b64(KEY)), Telemetry())
    assert cache is not None
    await cache.put_phrase("k", ALICE, AUDIO)
    reader = SynthesisCache(cache.store, personal_ttl_s=60, key_secret=SECRET.encode(), value_key=KEY)
    assert await reader.get_phrase("k", ALICE) == AUDIO
    stranger = SynthesisCache(cache.store, personal_ttl_s=60, key_secret=SECRET.encode(), value_key=OTHER)
    assert await stranger.get_phrase("k", ALICE) is None


async def test_the_memory_store_gets_a_random_key_per_process_not_one_from_the_secret() -> None:
    config = ServerConfig(cache_key_secret=SECRET)
    cache, other = build_cache(config, Telemetry()), build_cache(config, Telemetry())
    assert cache is not None and other is not None
    await cache.put_phrase("k", ALICE, AUDIO)
    assert await cache.get_phrase("k", ALICE) == AUDIO
    derived = SynthesisCache(cache.store, personal_ttl_s=60, key_secret=SECRET.encode())
    assert await derived.get_phrase("k", ALICE) is None  # not derived from the secret
    # Another process (cache) with the same secret names the entry alike but cannot open it.
    store_key = f"tts.phrase:u:{keyed(SECRET.encode(), 'personal', 'acme', 'alice', 'k')}"
    sealed = await cache.store.get(store_key)
    assert sealed is not None
    await other.store.set(store_key, sealed)
    assert await other.get_phrase("k", ALICE) is None
