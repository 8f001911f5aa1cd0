"""Authentication, tenants from credentials, roles, TLS and mutual TLS, through a real server and the
real client library; and the impersonation a probe found (another user's cached audio) fails."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.certs import Authority
from tests.conftest import ServerThread, serve_in_thread
from tests.helpers import SAMPLE_JFK
from voxwire import (
    AsyncClient,
    CachePolicy,
    Client,
    PermissionDeniedError,
    RecognitionConfig,
    ResourceExhaustedError,
    SynthesisCacheStatus,
    Tls,
    UnavailableError,
    VoxwireError,
)
from voxwire_server.app import build_runtime
from voxwire_server.auth import ApiKeys
from voxwire_server.config import ServerConfig
from voxwire_server.transport.server import build_server

ACME_KEY = "acme-app-key-0123456789"
GLOBEX_KEY = "globex-app-key-0123456789"
ADMIN_KEY = "acme-admin-key-0123456789"
OPERATOR_KEY = "operator-key-0123456789"
BOUND_KEY = "acme-kiosk-key-0123456789"

KEYS_TOML = f"""
[[key]]
id = "acme-app"
sha256 = "{hashlib.sha256(ACME_KEY.encode()).hexdigest()}"
tenant = "acme"
roles = ["user"]

[[key]]
id = "globex-app"
secret = "{GLOBEX_KEY}"
tenant = "globex"

[[key]]
id = "acme-admin"
secret = "{ADMIN_KEY}"
tenant = "acme"
roles = ["admin"]

[[key]]
id = "ops"
secret = "{OPERATOR_KEY}"
tenant = "ops"
roles = ["operator"]

[[key]]
id = "acme-kiosk"
secret = "{BOUND_KEY}"
tenant = "acme"
user = "kiosk-1"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority("voxwire test CA")
    (folder / "ca.crt").write_bytes(ca.pem)
    ca.issue("voxwire test server", server=True).write(folder, "server")
    (folder / "keys.toml").write_text(KEYS_TOML)
    return ca, folder


@pytest.fixture(scope="module")
def secure_server(pki: tuple[Authority, Path]) -> Iterator[str]:
    _, folder = pki
    handle: ServerThread = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0",
            api_keys=str(folder / "keys.toml"),
            tls_cert=str(folder / "server.crt"),
            tls_key=str(folder / "server.key"),
            shutdown_grace_s=1.0,
        ).validate()
    )
    yield handle.running.target
    handle.stop()


def _client(target: str, folder: Path, api_key: str | None) -> Client:
    return Client(target, timeout_s=60, api_key=api_key, tls=Tls.from_files(str(folder / "ca.crt")))


def _every_call(client: Client, clip: str) -> dict[str, object]:
    """One call of each RPC; the value is what it returned or the error it raised."""
    calls = {
        "Recognize": lambda: client.recognize(clip, RecognitionConfig()),
        "StreamingRecognize": lambda: list(client.stream(clip, RecognitionConfig())),
        "Synthesize": lambda: client.synthesize("Hello."),
        "SynthesizeStream": lambda: list(client.synthesize_stream("Hello.")),
        "ListVoices": lambda: client.list_voices(),
        "GetStats": lambda: client.stats(),
        "PurgeUser": lambda: client.purge_user("acme", "someone"),
        "Warmup": lambda: client.warmup(["Hello."]),
        "SubmitCorrection": lambda: client.submit_correction(clip, "and so my fellow Americans"),
    }
    outcomes: dict[str, object] = {}
    for name, call in calls.items():
        try:
            outcomes[name] = call()
        except VoxwireError as exc:
            outcomes[name] = exc
    return outcomes


@pytest.mark.parametrize("api_key", [None, "not-a-key-of-this-server", ""])
def test_every_rpc_refuses_missing_or_unknown_keys(
    secure_server: str, pki: tuple[Authority, Path], api_key: str | None
) -> None:
    with _client(secure_server, pki[1], api_key) as client:
        outcomes = _every_call(client, str(SAMPLE_JFK))
        # Health stays open: load balancers probe it without credentials.
        assert client.health() == "SERVING"
    for name, outcome in outcomes.items():
        assert isinstance(outcome, PermissionDeniedError), (name, outcome)
        assert outcome.code == "UNAUTHENTICATED", (name, outcome.code)


def test_roles_decide_what_a_key_may_call(secure_server: str, pki: tuple[Authority, Path]) -> None:
    folder = pki[1]
    with _client(secure_server, folder, ACME_KEY) as user:
        for call in (user.stats, lambda: user.warmup(["Hi."]), lambda: user.purge_user("acme", "x")):
            with pytest.raises(PermissionDeniedError) as err:
                call()
            assert err.value.code == "PERMISSION_DENIED"
        assert user.list_voices()
    with _client(secure_server, folder, ADMIN_KEY) as admin:
        assert admin.purge_user("", "someone") == 0
        assert admin.purge_user("acme", "someone") == 0
        with pytest.raises(PermissionDeniedError, match="tenant"):
            admin.purge_user("globex", "someone")
        with pytest.raises(PermissionDeniedError):
            admin.stats()
    with _client(secure_server, folder, OPERATOR_KEY) as operator:
        assert operator.stats().server_version
        assert operator.purge_user("globex", "someone") == 0


def test_tenant_comes_from_the_key_never_from_the_body(
    secure_server: str, pki: tuple[Authority, Path]
) -> None:
    folder = pki[1]
    with _client(secure_server, folder, ACME_KEY) as acme:
        with pytest.raises(PermissionDeniedError, match="tenant_id differs"):
            acme.synthesize("Hello there.", tenant_id="globex", user_id="u1")
        # Its own tenant named in the body is fine.
        acme.synthesize("Hello there.", tenant_id="acme", user_id="u1")
    with (
        _client(secure_server, folder, BOUND_KEY) as kiosk,
        pytest.raises(PermissionDeniedError, match="user_id differs"),
    ):
        kiosk.synthesize("Hello there.", user_id="somebody-else")


def test_another_tenants_user_ids_do_not_reach_its_cached_audio(
    secure_server: str, pki: tuple[Authority, Path]
) -> None:
    """The probe: a caller claiming another user's ids got that user's personal audio back as a HIT."""
    folder = pki[1]
    text = "Your appointment with Doctor Okafor is at nine fifteen."
    with _client(secure_server, folder, ACME_KEY) as acme:
        first = acme.synthesize(text, user_id="u1", cache_policy=CachePolicy.USE)
        again = acme.synthesize(text, user_id="u1", cache_policy=CachePolicy.USE)
        assert (first.cache_status, again.cache_status) == (
            SynthesisCacheStatus.MISS,
            SynthesisCacheStatus.HIT,
        )
    with _client(secure_server, folder, GLOBEX_KEY) as globex:
        # Same user id, same text, same voice: another tenant's key makes it another user.
        other = globex.synthesize(text, user_id="u1", cache_policy=CachePolicy.USE)
        assert other.cache_status == SynthesisCacheStatus.MISS
        # And it cannot purge acme's user either: the purge is scoped to its own tenant.
        with pytest.raises(PermissionDeniedError):
            globex.purge_user("acme", "u1")
    with _client(secure_server, folder, ACME_KEY) as acme:
        assert acme.synthesize(text, user_id="u1").cache_status == SynthesisCacheStatus.HIT


def test_plaintext_clients_cannot_talk_to_a_tls_server(secure_server: str) -> None:
    with Client(secure_server, timeout_s=10, api_key=ACME_KEY) as client, pytest.raises(UnavailableError):
        client.list_voices()


@pytest.mark.parametrize(
    "method", ["/voxwire.v1.Synthesizer/Synthesize", "/voxwire.v1.Synthesizer/ListVoices"]
)
def test_undecodable_unary_messages_are_invalid_argument(
    secure_server: str, pki: tuple[Authority, Path], method: str
) -> None:
    creds = grpc.ssl_channel_credentials((pki[1] / "ca.crt").read_bytes())
    with grpc.secure_channel(secure_server, creds) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff\xff\xff", timeout=10, metadata=(("authorization", f"Bearer {ACME_KEY}"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "not a valid" in (err.value.details() or "")


def test_undecodable_stream_messages_are_invalid_argument(
    secure_server: str, pki: tuple[Authority, Path]
) -> None:
    from voxwire.v1 import recognizer_pb2

    config = recognizer_pb2.StreamingRecognizeRequest(
        config=recognizer_pb2.StreamingRecognitionConfig(
            config=recognizer_pb2.RecognitionConfig(encoding=1, sample_rate_hz=16000)
        )
    ).SerializeToString()
    creds = grpc.ssl_channel_credentials((pki[1] / "ca.crt").read_bytes())
    with grpc.secure_channel(secure_server, creds) as channel:
        call = channel.stream_stream(
            "/voxwire.v1.Recognizer/StreamingRecognize", request_serializer=None, response_deserializer=None
        )
        responses = call(
            iter([config, b"\x0a\xff\xff\xff\xff\x0f"]),
            timeout=30,
            metadata=(("authorization", f"Bearer {ACME_KEY}"),),
        )
        with pytest.raises(grpc.RpcError) as err:
            list(responses)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(
    pki: tuple[Authority, Path], tmp_path: Path
) -> None:
    ca, folder = pki
    client_ca = Authority("voxwire test client CA")
    (tmp_path / "client-ca.crt").write_bytes(client_ca.pem)
    good_cert, good_key = client_ca.issue("kiosk-1", server=False).write(tmp_path, "good")
    bad_cert, bad_key = Authority("somebody else").issue("intruder", server=False).write(tmp_path, "bad")
    config = ServerConfig(
        listen="127.0.0.1:0",
        api_keys=str(folder / "keys.toml"),
        tls_cert=str(folder / "server.crt"),
        tls_key=str(folder / "server.key"),
        tls_client_ca=str(tmp_path / "client-ca.crt"),
    ).validate()
    # The transport alone (no models): the handshake is what is tested.
    grpc_server = build_server(config, build_runtime(config), ApiKeys.load(config.api_keys))
    await grpc_server.set_serving(True)
    await grpc_server.server.start()
    target = f"127.0.0.1:{grpc_server.port}"
    ca_file = str(folder / "ca.crt")
    try:
        async with AsyncClient(target, timeout_s=10, tls=Tls.from_files(ca_file, good_cert, good_key)) as ok:
            assert await ok.health() == "SERVING"
        for tls in (Tls.from_files(ca_file), Tls.from_files(ca_file, bad_cert, bad_key)):
            async with AsyncClient(target, timeout_s=10, tls=tls) as refused:
                with pytest.raises(UnavailableError):
                    await refused.health()
    finally:
        await grpc_server.server.stop(0)


async def test_a_keys_priority_decides_its_share_of_streams(tmp_path: Path) -> None:
    """The key's priority reaches admission: with two stream slots and priority classes on, a
    priority-0 key gets one slot and a priority-1 (premium) key keeps the other."""
    basic, premium = "basic-key-0123456789", "premium-key-0123456789"
    (tmp_path / "keys.toml").write_text(
        f'[[key]]\nid = "basic"\nsecret = "{basic}"\ntenant = "free"\npriority = 0\n\n'
        f'[[key]]\nid = "premium"\nsecret = "{premium}"\ntenant = "paid"\npriority = 1\n'
    )
    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0",
            api_keys=str(tmp_path / "keys.toml"),
            max_streams=2,
            admission_top_priority=1,
            admission_ramp_per_s=0,
            shutdown_grace_s=0.5,
        ).validate()
    )
    target = handle.running.target
    try:
        async with (
            AsyncClient(target, timeout_s=30, api_key=basic) as free,
            AsyncClient(target, timeout_s=30, api_key=premium) as paid,
        ):
            first = free.stream(str(SAMPLE_JFK), realtime=True, chunk_ms=100)
            async with contextlib.aclosing(first):  # type: ignore[type-var]
                await anext(first)  # holds the one slot priority 0 may use
                with pytest.raises(ResourceExhaustedError, match="priority 0"):
                    async for _ in free.stream(str(SAMPLE_JFK)):
                        pass
                finals = [u async for u in paid.stream(str(SAMPLE_JFK)) if u.result and u.result.is_final]
                assert "fellow americans" in finals[0].result.transcript.lower()  # type: ignore[union-attr]
    finally:
        await asyncio.to_thread(handle.stop)
