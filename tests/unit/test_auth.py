"""API key files, bearer tokens and the scoping of request ids to the caller's tenant."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from voxwire_server import auth
from voxwire_server.auth import ApiKeys, Principal
from voxwire_server.config import load_config
from voxwire_server.errors import ConfigError, InvalidInput, PermissionDenied, Unauthenticated

SECRET = "s3cret-key-for-tests"


def _entry(key_id: str, secret: str) -> dict[str, str]:
    return {"id": key_id, "secret": secret, "tenant": "t"}


def _keys(**extra: Any) -> dict[str, Any]:
    entry = {"id": "app", "secret": SECRET, "tenant": "acme", **extra}
    return {"key": [entry]}


def test_a_bearer_key_maps_to_its_tenant_roles_and_priority() -> None:
    keys = ApiKeys.parse(_keys(roles=["user", "admin"], priority=3))
    p = keys.authenticate([("authorization", f"Bearer {SECRET}")])
    assert (p.tenant_id, p.roles, p.priority, p.key_id) == ("acme", frozenset({"user", "admin"}), 3, "app")
    hashed = ApiKeys.parse(
        {"key": [{"id": "h", "sha256": hashlib.sha256(b"k" * 20).hexdigest(), "tenant": "t"}]}
    )
    assert hashed.authenticate([("authorization", "bearer " + "k" * 20)]).tenant_id == "t"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "missing credentials"),
        ([("authorization", "Basic abc")], "Bearer"),
        ([("authorization", "Bearer ")], "Bearer"),
        ([("authorization", "Bearer wrong-key-entirely")], "unknown API key"),
        ([("authorization", f"Bearer {SECRET}x")], "unknown API key"),
        ([("authorization", f"Bearer {SECRET}"), ("authorization", f"Bearer {SECRET}")], "more than one"),
    ],
)
def test_bad_credentials_are_unauthenticated(metadata: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        ApiKeys.parse(_keys()).authenticate(metadata)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no \\[\\[key\\]\\]"),
        (_keys(roles=["root"]), "unknown roles"),
        (_keys(roles=[]), "non-empty list"),
        (_keys(priority=11), "priority"),
        (_keys(tenant=""), "tenant must be"),
        (_keys(tenant="a b"), "tenant must be"),
        (_keys(color="red"), "unknown fields"),
        ({"key": [{"id": "a", "secret": "short", "tenant": "t"}]}, "at least 16"),
        ({"key": [{"id": "a", "sha256": "abc", "tenant": "t"}]}, "64 hex"),
        ({"key": [{"id": "a", "secret": SECRET, "sha256": "0" * 64, "tenant": "t"}]}, "exactly one"),
        ({"key": [_entry("a", SECRET), _entry("b", SECRET)]}, "repeats"),
        ({"key": [_entry("a", SECRET), _entry("a", SECRET + "2")]}, "used twice"),
    ],
)  # fmt: skip
def test_bad_key_files_are_refused_at_start_up(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ApiKeys.parse(data)


def test_key_file_errors_name_the_file(tmp_path: Any) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("[[key]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ApiKeys.load(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        ApiKeys.load(str(tmp_path / "missing.toml"))


def _as(principal: Principal) -> Any:
    return auth.use(principal)


def test_the_tenant_comes_from_the_key_and_a_different_body_tenant_is_refused() -> None:
    token = _as(Principal(tenant_id="acme", key_id="app"))
    try:
        assert auth.scoped_ids("", "u1") == ("acme", "u1")
        assert auth.scoped_ids("acme", "u1") == ("acme", "u1")
        with pytest.raises(PermissionDenied):
            auth.scoped_ids("globex", "u1")
        with pytest.raises(InvalidInput):
            auth.scoped_ids("", "x" * 200)
    finally:
        auth.reset(token)
    token = _as(Principal(tenant_id="acme", key_id="kiosk", user_id="k1"))
    try:
        assert auth.scoped_ids("", "") == ("acme", "k1")
        with pytest.raises(PermissionDenied):
            auth.scoped_ids("", "k2")
    finally:
        auth.reset(token)


def test_with_auth_off_the_ids_are_taken_as_sent() -> None:
    token = _as(auth.LOCAL)
    try:
        assert auth.scoped_ids("acme", "u1") == ("acme", "u1")
    finally:
        auth.reset(token)


def test_outside_a_call_nobody_is_trusted() -> None:
    assert auth.current() is auth.ANONYMOUS
    with pytest.raises(PermissionDenied):
        auth.scoped_ids("acme", "u1")


def test_auth_may_be_off_only_on_loopback(tmp_path: Any) -> None:
    for host in ("127.0.0.1", "127.0.0.9", "[::1]", "localhost"):
        load_config(["--listen", f"{host}:0"], environ={})
    with pytest.raises(ConfigError, match="needs API keys"):
        load_config(["--listen", "0.0.0.0:50051"], environ={})
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[[key]]\nid = "a"\nsecret = "{SECRET}"\ntenant = "t"\n')
    assert load_config(["--listen", "0.0.0.0:50051", "--api-keys", str(keys)], environ={}).api_keys


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "/nonexistent.crt"], "go together"),
        (["--tls-client-ca", "/etc/hostname"], "needs tls_cert"),
        (["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "is not a file"),
        (["--api-keys", "/nonexistent.toml"], "is not a file"),
    ],
)
def test_tls_and_key_options_are_checked(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, environ={})
