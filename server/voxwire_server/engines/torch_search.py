"""Greedy and beam search over TorchWhisperDecoder, with what CTranslate2's generate does not have:
a known run of tokens is fed in one pass (the committed prefix, and a draft: the tokens a stream's
last decode produced, accepted while they equal the argmax, so a final usually costs one pass and a
few steps), and a search can be exported (tokens, scores, K-V per beam) and continued elsewhere."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from voxwire_server.engines.base import DecoderBeam, DecoderState
from voxwire_server.engines.torch_decoder import KVCache, TorchWhisperDecoder

# Draft tokens fed in one pass after the first (which feeds the whole draft): a mismatch wastes the
# positions after it.
DRAFT_PER_PASS = 16
# What a draft that went quiet (its lookahead fell to 0) is tried with again once it resyncs strongly.
RESYNC_LOOKAHEAD = 4
# Positions whose logits are computed at once when a pass verifies a long draft.
PROJECTED_PER_CHUNK = 24
# The argmax of a position that was not computed (a forced token's).
UNKNOWN = -1

__all__ = ["Generated", "SearchRow", "SearchSettings", "TorchSearch", "window_fingerprint"]


def window_fingerprint(audio: npt.NDArray[np.float32], window_samples: int) -> str:
    """What the self-attention K-V of a decode depends on besides its tokens: the encoder's input,
    which the audio and the window length determine."""
    digest = hashlib.blake2b(np.ascontiguousarray(audio, dtype=np.float32).tobytes(), digest_size=16)
    digest.update(f"/{audio.size}/{window_samples}".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SearchSettings:
    """What changes a search's outcome besides its window and prompt: a stored search is continued
    only under the same settings."""

    beam_size: int = 1
    num_hypotheses: int = 1
    # CTranslate2's max_length: a decode chooses at most min(max_length // 2, max_length - head + 1)
    # tokens (forced ones included), as CTranslate2's Whisper generate does (measured).
    max_length: int = 448
    repetition_penalty: float = 1.0
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = ()
    # The weights and precision that decode: another model's K-V is not this one's.
    model: str = ""

    @property
    def key(self) -> str:
        digest = hashlib.blake2b(repr(self).encode(), digest_size=8)
        return digest.hexdigest()

    def end_at(self, head: int) -> int:
        """The sequence length (head included) at which a decode stops."""
        return head + max(1, min(self.max_length // 2, self.max_length - head + 1))


@dataclass(frozen=True, slots=True)
class SearchRow:
    """One window's search: ``head`` (previous text, start of transcript, no timestamps) and ``forced``
    tokens (the committed prefix) are given; ``draft`` is a guess of what follows; ``state`` a stored
    search of this stream, continued when it ran on the same window, head, forced tokens and settings."""

    window: str
    head: tuple[int, ...]
    forced: tuple[int, ...] = ()
    draft: tuple[int, ...] = ()
    state: DecoderState | None = None
    keep_kv: bool = False


@dataclass(frozen=True, slots=True)
class Generated:
    """What CTranslate2's generate returns (sequences after the head, length-normalized scores, the
    no-speech probability), the search state to store, and what the decoder did for it."""

    sequences_ids: list[list[int]]
    scores: list[float]
    no_speech_prob: float
    state: DecoderState
    # Decoder passes (each feeds every row not done: its known tokens, or a token and a draft's next).
    passes: int = 0
    accepted_draft: int = 0
    # Tokens after the head taken from the stored search (with their K-V).
    reused: int = 0


@dataclass(slots=True)
class _Beam:
    tokens: list[int]
    logprobs: list[float] = field(default_factory=list)
    # The sequence length at which it stops (SearchSettings.end_at).
    end_at: int = 0
    # The argmax at each position after the head (differs from the token where it was forced).
    choices: list[int] = field(default_factory=list)


class TorchSearch:
    def __init__(
        self, decoder: TorchWhisperDecoder, *, eot: int, blank: tuple[int, ...], no_speech: int
    ) -> None:
        self.decoder = decoder
        self.eot = eot
        self.blank = blank
        self.no_speech = no_speech
        self._id_tensors: dict[tuple[int, ...], torch.Tensor] = {}

    # -- logits -> choices -------------------------------------------------------------------------

    def _processed(
        self, logits: torch.Tensor, generated: list[int], first: bool, settings: SearchSettings
    ) -> torch.Tensor:
        """Log-probabilities of one position after suppression and the repetition penalty."""
        logits = logits.clone()
        if settings.suppress_tokens:
            logits.index_fill_(0, self._ids(settings.suppress_tokens), -math.inf)
        if first and settings.suppress_blank:
            logits.index_fill_(0, self._ids((*self.blank, self.eot)), -math.inf)
        if settings.repetition_penalty != 1.0 and generated:
            seen = torch.tensor(sorted(set(generated)), dtype=torch.long, device=logits.device)
            values = logits[seen]
            penalty = settings.repetition_penalty
            logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
        return torch.log_softmax(logits, dim=-1)

    def _suppress(self, logits: torch.Tensor, first_index: int, settings: SearchSettings) -> None:
        """Suppression on the logits of consecutive positions, in place (the first chooses token
        ``first_index`` after the head)."""
        if settings.suppress_tokens:
            logits.index_fill_(1, self._ids(settings.suppress_tokens), -math.inf)
        if first_index == 0 and settings.suppress_blank:
            logits[0].index_fill_(0, self._ids((*self.blank, self.eot)), -math.inf)

    def _ids(self, tokens: tuple[int, ...]) -> torch.Tensor:
        """Token ids as a tensor, made once per set (suppression lists are the same for every step)."""
        ids = self._id_tensors.get(tokens)
        if ids is None:
            if len(self._id_tensors) > 64:
                self._id_tensors.clear()
            ids = self._id_tensors[tokens] = torch.tensor(
                tokens, dtype=torch.long, device=self.decoder.device
            )
        return ids

    def _no_speech(self, logits: torch.Tensor) -> float:
        return float(torch.softmax(logits, dim=-1)[self.no_speech])

    # -- greedy --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def greedy(
        self,
        encoder_output: npt.NDArray[np.float32] | torch.Tensor,
        rows: list[SearchRow],
        settings: SearchSettings,
    ) -> list[Generated]:
        """Greedy decoding of a batch of windows, equal token for token to decoding step by step.

        A row starts where its stored search still holds (same window, head and settings): the stored
        tokens are taken, with their K-V, as long as decoding step by step would choose them too (the
        stored argmax of every position says so). Then the decoder runs in passes over all rows at
        once: the first feeds each row's known tokens (the rest of the head, the forced ones, the
        draft), each later one a row's last chosen token and what the draft says comes next. A fed
        draft token is kept while it is the argmax; after a mismatch the draft picks up again where
        it holds the last tokens chosen (a word changed, added or dropped). Invariant: a row's cache
        holds every token but its last chosen one, which is fed next."""
        n = len(rows)
        beams = [_Beam(list(r.head), end_at=settings.end_at(len(r.head))) for r in rows]
        cache = self.decoder.start(encoder_output, max(b.end_at for b in beams) + 1)
        done = [False] * n
        no_speech = [0.0] * n
        accepted = [0] * n
        reused = [0] * n
        feed: list[list[int]] = []
        drafts: list[list[int]] = []
        cursors = [0] * n
        synced = [True] * n
        # Draft tokens fed per pass after the first: a quarter after a pass that kept none, twice as
        # many after one that kept all (a draft that keeps failing costs little).
        lookahead = [DRAFT_PER_PASS] * n
        blocks_first: list[list[int]] = []
        for i, row in enumerate(rows):
            taken = self._take_stored(row, settings, beams[i], cache, i)
            reused[i] = taken
            # The draft after the tokens taken: the forced ones left come first, then the draft's rest.
            index = len(beams[i].tokens) - len(row.head)
            forced = list(row.forced[index:])
            draft = list(row.draft)
            beyond = index - len(row.forced)
            if beyond > 0:
                taken_free = beams[i].tokens[len(row.head) + len(row.forced) :]
                draft = draft[beyond:] if draft[:beyond] == taken_free else []
            drafts.append(draft)
            if taken:
                no_speech[i] = row.state.no_speech_prob if row.state is not None else 0.0
                done[i] = self._ended(beams[i], settings)
            forced = forced[: max(0, beams[i].end_at - len(beams[i].tokens))]  # the cap comes first
            room = max(0, beams[i].end_at - len(beams[i].tokens) - len(forced))
            start = beams[i].tokens[-1:] if taken else list(row.head)
            feed.append([] if done[i] else [*start, *forced, *draft[:room]])
            blocks_first.append([] if taken or done[i] else [*start, *forced])
        passes = 0
        while any(feed):
            passes += 1
            tokens = torch.zeros((n, max(len(f) for f in feed)), dtype=torch.long)
            for i, f in enumerate(feed):
                if f:
                    tokens[i, : len(f)] = torch.tensor(f, dtype=torch.long)
            starts = list(cache.lengths)
            # A row's prompt (head and forced tokens, fed first when it starts from scratch) attends
            # as one block, the same with a draft as without; everything else position by position.
            blocks = [len(blocks_first[i]) if passes == 1 else 0 for i in range(n)]
            hidden = self.decoder.forward(cache, tokens, [len(f) for f in feed], blocks)
            for i, row in enumerate(rows):
                if not feed[i]:
                    continue
                ns, kept, missed = self._verify(beams[i], hidden[i], starts[i], row, feed[i], settings)
                if passes == 1 and not reused[i]:
                    no_speech[i] = ns
                if passes > 1 and len(feed[i]) > 1:
                    grown = (
                        lookahead[i] * 2 if not missed else lookahead[i] // 4 if not kept else lookahead[i]
                    )
                    lookahead[i] = min(DRAFT_PER_PASS, grown)
                accepted[i] += kept
                done[i] = self._ended(beams[i], settings)
                cursors[i] += kept + missed
                synced[i] = synced[i] and not missed
                if not synced[i]:
                    found = self._resync(beams[i].tokens[len(row.head) :], drafts[i], cursors[i])
                    if found is not None:
                        (cursors[i], strong), synced[i] = found, True
                        # Two tokens agree again: worth trying a few; one: at least the next.
                        lookahead[i] = max(lookahead[i], RESYNC_LOOKAHEAD if strong else 1)
            # A row's cache is valid up to its chosen tokens; what was fed past a mismatch is overwritten.
            cache.lengths = [len(b.tokens) - 1 for b in beams]
            for i, beam in enumerate(beams):
                room = max(0, beam.end_at - len(beam.tokens))
                ahead = drafts[i][cursors[i] : cursors[i] + min(room, lookahead[i])] if synced[i] else []
                feed[i] = [] if done[i] else [beam.tokens[-1], *ahead]
        results = []
        for i, row in enumerate(rows):
            kept_beam = self._hypothesis(beams[i], cache, i, row.keep_kv, settings)
            state = DecoderState(
                row.window,
                settings.key,
                row.head,
                row.forced,
                () if kept_beam.finished else (kept_beam,),
                (kept_beam,) if kept_beam.finished else (),
                no_speech[i],
            )
            out, score = self._output(beams[i], len(row.head), len(row.forced))
            results.append(Generated([out], [score], no_speech[i], state, passes, accepted[i], reused[i]))
        return results

    @staticmethod
    def _resync(generated: list[int], draft: list[int], cursor: int) -> tuple[int, bool] | None:
        """Where the draft goes on after a mismatch: just past the first place from ``cursor`` on
        where it holds the last two tokens chosen (strong), else the last one; None if nowhere yet."""
        for n, reach in ((2, len(draft)), (1, cursor + 6)):
            if len(generated) < n:
                continue
            tail = generated[-n:]
            # A single token ("," " the") recurs: it resyncs only near where the draft went wrong.
            for j in range(max(n, cursor), min(len(draft), reach)):
                if draft[j - n : j] == tail:
                    return j, n == 2
        return None

    def _take_stored(
        self, row: SearchRow, settings: SearchSettings, beam: _Beam, cache: KVCache, i: int
    ) -> int:
        """Takes what holds of the row's stored search into its beam and cache; how many tokens after
        the head were taken (0: none, the row starts from scratch)."""
        state = self._continuable(row, settings, greedy=True)
        if state is None:
            return 0
        (stored,) = state.live or state.finished
        head = len(row.head)
        generated = stored.tokens[head:]
        taken = 0
        for k, token in enumerate(generated):
            # Step by step would take the forced token here, else the argmax: the stored one holds
            # only if it is that, and then so does the K-V it was fed with.
            expected = row.forced[k] if k < len(row.forced) else stored.choices[k]
            if token != expected:
                break
            taken += 1
        if taken == 0:
            return 0
        length = head + taken
        # K-V of every token but the last taken (it is fed next, or it ended the search).
        cache.load(i, stored.kv, length - 1, stored_length=len(stored.tokens) - 1)
        beam.tokens = list(stored.tokens[:length])
        beam.logprobs = list(stored.logprobs[:taken])
        beam.choices = list(stored.choices[:taken])
        return taken

    def _verify(
        self,
        beam: _Beam,
        hidden: torch.Tensor,
        start: int,
        row: SearchRow,
        fed: list[int],
        settings: SearchSettings,
    ) -> tuple[float, int, int]:
        """Choices at the positions of a pass that fed ``fed`` from position ``start``: forced tokens
        as given, then the argmax while it equals what was fed. Returns the no-speech probability
        (when the pass fed the head), how many draft tokens were kept and whether (1) a fed draft
        token was not the argmax."""
        head, forced = len(row.head), len(row.forced)
        sot = head - 2 - start  # the start of transcript, before no-timestamps (when it was fed)
        no_speech = self._no_speech(self.decoder.log_probs(hidden[sot])) if sot >= 0 else 0.0
        first = max(start, head - 1)  # the first position whose logits choose a token
        last = start + len(fed) - 1
        # Forced tokens are taken as they are: the positions that choose them need no logits (their
        # argmax is unknown, and their log-probability is left out of the score).
        while first + 1 - head < forced and first < last:
            beam.tokens.append(row.forced[first + 1 - head])
            beam.logprobs.append(0.0)
            beam.choices.append(UNKNOWN)
            first += 1
            if self._ended(beam, settings):
                return no_speech, 0, 0
        positions = list(range(first, last + 1))
        if settings.repetition_penalty != 1.0:
            kept, missed = self._choose_each(beam, hidden, start, positions, row, fed, settings)
            return no_speech, kept, missed
        kept = missed = 0
        # Projected a chunk at a time: a draft that goes wrong early costs the logits of a chunk.
        for c in range(0, len(positions), PROJECTED_PER_CHUNK):
            chunk = positions[c : c + PROJECTED_PER_CHUNK]
            logits = self.decoder.log_probs(hidden[[p - start for p in chunk]])
            self._suppress(logits, chunk[0] + 1 - head, settings)
            totals = torch.logsumexp(logits, dim=-1)
            choices = torch.argmax(logits, dim=-1).tolist()
            taken: list[int] = []
            stop = False
            for k, position in enumerate(chunk):
                index = position + 1 - head  # which token after the head this position chooses
                token = row.forced[index] if index < forced else choices[k]
                beam.tokens.append(token)
                beam.choices.append(choices[k])
                taken.append(token)
                following = position + 1 - start
                if following < len(fed) and fed[following] != token:
                    missed, stop = 1, True
                elif self._ended(beam, settings) or following >= len(fed):
                    stop = True
                elif index >= forced:
                    kept += 1
                if stop:
                    break
            rows = torch.arange(len(taken), device=logits.device)
            chosen = torch.tensor(taken, device=logits.device)
            beam.logprobs.extend((logits[rows, chosen] - totals[rows]).tolist())
            if stop:
                break
        return no_speech, kept, missed

    def _choose_each(
        self,
        beam: _Beam,
        hidden: torch.Tensor,
        start: int,
        positions: list[int],
        row: SearchRow,
        fed: list[int],
        settings: SearchSettings,
    ) -> tuple[int, int]:
        """_verify's choices one position at a time: with a repetition penalty each position's
        logits depend on the tokens chosen before it."""
        head, forced = len(row.head), len(row.forced)
        logits = self.decoder.log_probs(hidden[[p - start for p in positions]])
        kept = 0
        for k, position in enumerate(positions):
            index = position + 1 - head
            lp = self._processed(logits[k], beam.tokens[head:], index == 0, settings)
            choice = int(torch.argmax(lp))
            token = row.forced[index] if index < forced else choice
            beam.tokens.append(token)
            beam.logprobs.append(float(lp[token]))
            beam.choices.append(choice)
            following = position + 1 - start
            if following < len(fed) and fed[following] != token:
                return kept, 1
            if self._ended(beam, settings) or following >= len(fed):
                break
            if index >= forced:
                kept += 1
        return kept, 0

    def _ended(self, beam: _Beam, settings: SearchSettings) -> bool:
        return beam.tokens[-1] == self.eot or len(beam.tokens) >= beam.end_at

    def _choose(self, beam: _Beam, logits: torch.Tensor, settings: SearchSettings, head: int) -> None:
        lp = self._processed(logits, beam.tokens[head:], len(beam.tokens) == head, settings)
        token = int(torch.argmax(lp))
        beam.tokens.append(token)
        beam.logprobs.append(float(lp[token]))
        beam.choices.append(token)

    def _hypothesis(
        self, beam: _Beam, cache: KVCache, row: int, keep_kv: bool, settings: SearchSettings
    ) -> DecoderBeam:
        kv = cache.export(row, len(beam.tokens) - 1) if keep_kv else b""
        return DecoderBeam(
            tuple(beam.tokens), tuple(beam.logprobs), self._ended(beam, settings), kv, tuple(beam.choices)
        )

    def _output(self, beam: _Beam | DecoderBeam, head: int, forced: int = 0) -> tuple[list[int], float]:
        """The tokens after the head without the end of text, and the mean log-probability of the
        tokens chosen (forced ones are not: greedy decoding does not score them)."""
        out = list(beam.tokens[head:])
        if out and out[-1] == self.eot:
            out.pop()
        scored = list(beam.logprobs)
        if forced and len(beam.choices) == len(scored):
            scored = [lp for lp, c in zip(scored, beam.choices, strict=True) if c != UNKNOWN]
        return out, sum(scored) / max(1, len(scored))

    def _continuable(self, row: SearchRow, settings: SearchSettings, *, greedy: bool) -> DecoderState | None:
        """The row's stored search, when it ran on this window (its K-V is valid only there), with this
        head and these settings, and kept its K-V; a beam search also needs the same forced tokens."""
        state = row.state
        if state is None or state.window != row.window or state.settings != settings.key:
            return None
        if state.head != row.head or (not greedy and state.forced != row.forced):
            return None
        beams = state.live or state.finished
        if not beams or (greedy and len(beams) != 1):
            return None
        per_token = self.decoder.kv_bytes_per_token
        head, end_at = len(row.head), settings.end_at(len(row.head))
        if len(state.live) > settings.beam_size or len(state.finished) > settings.beam_size:
            return None
        for b in (*state.live, *state.finished):
            # A state is the server's own, but one of another build or a damaged one must never
            # fail the batch it would join: anything that does not fit is decoded afresh.
            if (
                len(b.tokens) > end_at
                or b.tokens[:head] != row.head
                or len(b.logprobs) != len(b.tokens) - head
            ):
                return None
            if any(not 0 <= t < self.decoder.vocab for t in b.tokens):
                return None
        needs_kv = beams if greedy else state.live
        for b in needs_kv:
            if len(b.kv) != (len(b.tokens) - 1) * per_token or len(b.tokens) <= len(row.head):
                return None
            if greedy and len(b.choices) != len(b.tokens) - len(row.head):
                return None
        return state

    # -- beam search -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def beam_search(
        self,
        encoder_output: npt.NDArray[np.float32] | torch.Tensor,
        rows: list[SearchRow],
        settings: SearchSettings,
        *,
        max_steps: int | None = None,
    ) -> list[Generated]:
        """Beam search per window, its beams batched in the decoder and their K-V reordered as beams
        are chosen. ``max_steps`` stops early (the search state says where it stood: a later call
        with that state goes on with the same search)."""
        encoded = torch.as_tensor(encoder_output)
        return [self._beam_row(encoded[i : i + 1], row, settings, max_steps) for i, row in enumerate(rows)]

    def _beam_row(
        self, encoded: torch.Tensor, row: SearchRow, settings: SearchSettings, max_steps: int | None
    ) -> Generated:
        width = settings.beam_size
        head = len(row.head)
        end_at = settings.end_at(head)
        stored = self._continuable(row, settings, greedy=False)
        passes = steps = 0
        if stored is not None:
            live = [_Beam(list(h.tokens), list(h.logprobs), end_at) for h in stored.live]
            finished = list(stored.finished)
            no_speech = stored.no_speech_prob
            if not live:
                return self._beam_result(row, settings, [], finished, None, no_speech, 0, True)
            cache = self.decoder.start(encoded.expand(len(live), -1, -1), end_at + 1)
            for j, h in enumerate(stored.live):
                cache.load(j, h.kv, len(h.tokens) - 1)
            fed = torch.tensor([[b.tokens[-1]] for b in live], dtype=torch.long)
            hidden = self.decoder.forward(cache, fed, [1] * len(live))
            logits = self.decoder.log_probs(hidden[:, 0])
            passes = 1
        else:
            cache = self.decoder.start(encoded, end_at + 1)
            known = [*row.head, *row.forced[: end_at - head]]
            hidden = self.decoder.forward(
                cache, torch.tensor([known], dtype=torch.long), [len(known)], [len(known)]
            )
            passes = 1
            every = self.decoder.log_probs(hidden[0, [head - 2, *range(head - 1, len(known))]])
            no_speech = self._no_speech(every[0])
            beam = _Beam(list(row.head), end_at=end_at)
            for k, token in enumerate(row.forced[: end_at - head]):
                lp = self._processed(every[k + 1], beam.tokens[head:], k == 0, settings)
                beam.tokens.append(token)
                beam.logprobs.append(float(lp[token]))
            live, finished = [beam], []
            if len(beam.tokens) >= end_at:  # the forced tokens filled the cap: nothing to search
                kv = cache.export(0, len(beam.tokens) - 1) if row.keep_kv else b""
                live, finished = [], [DecoderBeam(tuple(beam.tokens), tuple(beam.logprobs), True, kv)]
            logits = every[-1:]
        while live and len(finished) < width and (max_steps is None or steps < max_steps):
            lps = torch.stack(
                [
                    self._processed(logits[j], b.tokens[head:], len(b.tokens) == head, settings)
                    for j, b in enumerate(live)
                ]
            )
            totals = lps + torch.tensor([sum(b.logprobs) for b in live], device=lps.device)[:, None]
            top = torch.topk(totals.flatten(), min(2 * width, totals.numel()))
            vocab = lps.shape[1]
            chosen: list[_Beam] = []
            parents: list[int] = []
            for flat in top.indices.tolist():
                parent, token = divmod(int(flat), vocab)
                beam = _Beam(
                    [*live[parent].tokens, token], [*live[parent].logprobs, float(lps[parent, token])]
                )
                if token == self.eot or len(beam.tokens) >= end_at:
                    if len(finished) < width:
                        kv = cache.export(parent, len(beam.tokens) - 1) if row.keep_kv else b""
                        finished.append(DecoderBeam(tuple(beam.tokens), tuple(beam.logprobs), True, kv))
                elif len(chosen) < width:
                    chosen.append(beam)
                    parents.append(parent)
                if len(chosen) == width:
                    break
            steps += 1
            live = chosen
            if not live or len(finished) >= width:
                break
            cache = cache.select(torch.tensor(parents, dtype=torch.long, device=lps.device))
            if max_steps is not None and steps >= max_steps:
                return self._beam_result(row, settings, live, finished, cache, no_speech, passes, False)
            fed = torch.tensor([[b.tokens[-1]] for b in live], dtype=torch.long)
            hidden = self.decoder.forward(cache, fed, [1] * len(live))
            passes += 1
            logits = self.decoder.log_probs(hidden[:, 0])
        if len(finished) >= width:
            live = []
        return self._beam_result(row, settings, live, finished, cache, no_speech, passes, stored is not None)

    def _beam_result(
        self,
        row: SearchRow,
        settings: SearchSettings,
        live: list[_Beam],
        finished: list[DecoderBeam],
        cache: KVCache | None,
        no_speech: float,
        passes: int,
        reused: bool,
    ) -> Generated:
        head = len(row.head)
        kept_live = tuple(
            DecoderBeam(
                tuple(b.tokens),
                tuple(b.logprobs),
                False,
                cache.export(j, len(b.tokens) - 1) if row.keep_kv and cache is not None else b"",
            )
            for j, b in enumerate(live)
        )
        state = DecoderState(
            row.window, settings.key, row.head, row.forced, kept_live, tuple(finished), no_speech
        )
        # Ranked by mean log-probability; a search stopped early ranks its live beams too.
        ranked = sorted([*finished, *kept_live], key=lambda h: -_mean(h.logprobs))
        outputs = [self._output(h, head) for h in ranked[: settings.num_hypotheses]]
        return Generated(
            [o for o, _ in outputs], [s for _, s in outputs], no_speech, state, passes, 0, int(reused)
        )


def _mean(logprobs: tuple[float, ...]) -> float:
    return sum(logprobs) / max(1, len(logprobs))
