"""Resumable streams: each stream's state is written to the stream-state store as it goes, and a
signed token finds it again, on this replica or another.

A stream's writes advance its stored sequence by compare-and-set, so once a resumed stream has
written, the connection it replaced can no longer write (it ends with StateConflict). A store that
fails makes the stream go on without resumability, never fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from voxwire_server.caches.envelope import KEY_BYTES, Sealer, SealError
from voxwire_server.domain import Resumability, ResumeInfo
from voxwire_server.errors import InvalidInput, LimitExceeded, NotFound, PermissionDenied, Unavailable
from voxwire_server.sessions.resume_tokens import MAX_TOKEN_BYTES, ResumeTokens
from voxwire_server.sessions.stream_state import StreamState, StreamStateError
from voxwire_server.storage.base import StoreUnavailable
from voxwire_server.storage.state import StateConflict, StateStore

__all__ = ["Resumption", "StateSettings", "StateWriter", "StreamStates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateSettings:
    # A stream's state lives this long after its last write (and so does its resume token).
    ttl_s: float = 300.0
    # Between finals, a stream writes its state at most this often (0: after every chunk it takes).
    # Before a final is sent its state is always written.
    interval_s: float = 0.5
    # Finals kept in the state to send again on resume; a token older than the oldest is refused.
    max_kept_finals: int = 32


@dataclass(frozen=True, slots=True)
class Resumption:
    """A stored state a client resumes, and the sequence its token names."""

    state: StreamState
    token_sequence: int
    token: bytes


class StreamStates:
    """The store, the token signer and the settings that every resumable stream of a server shares."""

    def __init__(
        self,
        store: StateStore,
        secret: bytes,
        settings: StateSettings,
        *,
        on_write: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        # A store other replicas read: a draining server leaves its streams to them, unfinalized.
        self.shared = store.name != "memory"
        self.settings = settings
        self.tokens = ResumeTokens(secret, settings.ttl_s)
        self._owner_key = hmac.new(secret, b"voxwire stream owner tag", hashlib.sha256).digest()
        # States hold transcripts (and, for resampled audio, speech): sealed at rest like cache values,
        # under a key of their own from the secret every replica shares, bound to the stream's key.
        state_key = hmac.new(secret, b"voxwire stream state key", hashlib.sha256).digest()[:KEY_BYTES]
        self.sealer = Sealer(state_key)
        self._on_write = on_write

    def owner(self, tenant_id: str, user_id: str) -> str:
        """What a state is filed under for PurgeUser: a keyed hash, so the store holds no user ids
        ('' for a stream without a user)."""
        if not user_id:
            return ""
        ids = f"{len(tenant_id)}:{tenant_id}{user_id}".encode()
        return hmac.new(self._owner_key, ids, hashlib.sha256).hexdigest()[:32]

    def writer(self, tenant_id: str, user_id: str, resumed: Resumption | None = None) -> StateWriter:
        if resumed is None:
            return StateWriter(self, secrets.token_hex(16), tenant_id, self.owner(tenant_id, user_id), 0)
        state = resumed.state
        writer = StateWriter(self, state.key, tenant_id, self.owner(tenant_id, user_id), state.sequence)
        writer.offset_bytes = state.replay_from_bytes
        return writer

    async def resume(self, token: bytes, tenant_id: str, model: str) -> Resumption:
        """The state a token resumes. InvalidInput (forged or damaged), NotFound (expired, ended,
        purged), PermissionDenied (another tenant's), LimitExceeded (older than the finals kept),
        Unavailable (the store is down: try again)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidInput(f"resume_token is {len(token)} bytes; tokens are at most {MAX_TOKEN_BYTES}")
        point = self.tokens.verify(token, tenant_id)
        try:
            saved = await self.store.load(point.stream_id)
        except StoreUnavailable:
            raise Unavailable("the stream-state store is unavailable: retry the resume shortly") from None
        if saved is None or saved.sequence < point.sequence:
            raise NotFound("no state of this stream is stored (it ended, expired or was purged): start anew")
        try:
            state = StreamState.from_bytes(self.sealer.open(saved.payload, point.stream_id)[0])
        except (SealError, StreamStateError) as exc:
            log.warning("a stored stream state cannot be resumed: %s", exc)
            raise NotFound(
                "the stored state of this stream cannot be read by this server: start anew"
            ) from None
        if state.key != point.stream_id or state.sequence != saved.sequence:
            log.warning("a stored stream state does not match its key or sequence")
            raise NotFound("the stored state of this stream is inconsistent: start anew")
        if state.tenant_id != tenant_id:
            raise PermissionDenied("the resume token belongs to another tenant")
        if state.model != model:
            raise NotFound(
                f"the stream was decoded by another model ({state.model}); this server runs {model}: "
                "start anew"
            )
        if point.sequence < state.resend_from:
            raise LimitExceeded(
                "the resume token is too old: finals sent after it are no longer kept; resume with the "
                "latest token"
            )
        return Resumption(state, point.sequence, token)

    async def purge_owner(self, tenant_id: str, user_id: str) -> int:
        """Deletes the state of every stream of this user (they can no longer be resumed)."""
        owner = self.owner(tenant_id, user_id)
        if not owner:
            return 0
        try:
            return await self.store.purge_owner(owner)
        except StoreUnavailable:
            raise Unavailable("the stream-state store is unavailable: purge again shortly") from None

    def count(self, outcome: str, size_bytes: int = 0) -> None:
        if self._on_write is not None:
            self._on_write(outcome, size_bytes)


class StateWriter:
    """One stream's writes: each takes the stored sequence one further, or fails the stream when
    another connection has taken it (StateConflict). A failed store leaves the stream going."""

    def __init__(self, states: StreamStates, key: str, tenant_id: str, owner: str, sequence: int) -> None:
        self._states = states
        self.key = key
        self._tenant_id = tenant_id
        self._owner = owner
        # The sequence stored by this writer's last write that succeeded (0: none), and the bytes of
        # the client's audio that state covers.
        self.sequence = sequence
        self.offset_bytes = 0
        # A write that failed may still have landed: (its sequence, payload, offset) until the next
        # write settles it.
        self._uncertain: tuple[int, bytes, int] | None = None
        self._retired = False
        # A new stream writes before its first response, so no response says RESUMABLE untested.
        self.status = Resumability.RESUMABLE
        self._token = b""
        self._token_sequence = 0

    @property
    def next_sequence(self) -> int:
        return self.sequence + 1

    def info(self, token: bytes | None = None) -> ResumeInfo:
        """What a response says of resumption: the latest token (or ``token``), and where the audio
        of the latest state stored ends."""
        if token is None:
            token = self.token()
        return ResumeInfo(self.status, token, self.offset_bytes)

    def token(self) -> bytes:
        if not self.sequence:
            return b""
        if self._token_sequence != self.sequence:
            self._token = self._states.tokens.issue(self.key, self._tenant_id, self.sequence)
            self._token_sequence = self.sequence
        return self._token

    @property
    def retired(self) -> bool:
        return self._retired

    def retire(self) -> None:
        """The stream can no longer be resumed (it was finalized for good): no more writes, and every
        response says NOT_RESUMABLE, so that no client tries."""
        self._retired = True
        self.status = Resumability.NOT_RESUMABLE

    async def write(self, build: Callable[[int], StreamState]) -> bool:
        """Writes the state ``build`` makes for the next sequence; False when the store failed.
        StateConflict when another connection took the stream over; NotFound when its state expired
        or was purged meanwhile."""
        if self._retired:
            return False
        settings = self._states.settings
        sequence = self.next_sequence
        state = build(sequence)
        payload = self._states.sealer.seal(state.to_bytes(), self.key)
        try:
            try:
                await self._states.store.save(
                    self.key,
                    payload,
                    sequence=sequence,
                    previous=self.sequence,
                    ttl_s=settings.ttl_s,
                    owner=self._owner,
                )
            except StateConflict as conflict:
                if conflict.stored == 0 and self.sequence:
                    self._states.count("conflict")
                    raise NotFound("the stream's state expired or was purged: start a new stream") from None
                if not await self._landed(conflict.stored):
                    self._states.count("conflict")
                    raise
                # The write that timed out had landed after all: go on from it.
                assert self._uncertain is not None
                self.sequence, _, self.offset_bytes = self._uncertain
                self._uncertain = None
                return await self.write(build)
        except StoreUnavailable as exc:
            if self.status is Resumability.RESUMABLE:
                log.warning("stream state not written (the stream is not resumable for now): %s", exc)
            self._uncertain = (sequence, payload, state.replay_from_bytes)
            self.status = Resumability.STORE_UNAVAILABLE
            self._states.count("unavailable")
            return False
        self.sequence, self._uncertain = sequence, None
        self.offset_bytes = state.replay_from_bytes
        self.status = Resumability.RESUMABLE
        self._states.count("ok", len(payload))
        return True

    async def _landed(self, stored: int) -> bool:
        """Whether the stored state is this writer's own write that failed: the same sequence and
        the same sealed bytes (their nonce is unique), not another connection's."""
        if self._uncertain is None or stored != self._uncertain[0]:
            return False
        saved = await self._states.store.load(self.key)
        return saved is not None and saved.sequence == stored and saved.payload == self._uncertain[1]

    async def delete(self) -> None:
        """The stream ended: its state goes, unless another connection has written it since (a store
        that fails leaves it to expire)."""
        with contextlib.suppress(StoreUnavailable):
            saved = await self._states.store.load(self.key)
            if saved is not None and saved.sequence == self.sequence:
                await self._states.store.delete(self.key)
