"""Whisper's decoder in PyTorch on the weights of a CTranslate2 model directory, with an explicit
self-attention K-V cache: what CTranslate2 does not expose (its prefix is forced one step per token),
so a known run of tokens (a committed prefix, a draft) is fed in one batched pass here, and a
stream's K-V can be kept and continued."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from voxwire_server.engines.ct2_weights import ModelFile, WeightsError, read_model_bin

__all__ = ["KVCache", "TorchWhisperDecoder"]

log = logging.getLogger(__name__)

_LAYER_NORM_EPS = 1e-5


class Int8Linear(nn.Module):
    """A linear layer computed the way CTranslate2's int8 mode computes it: weights quantized per output
    row, activations per input row (symmetric, scale 127 / max |x|), an int8 product summed in int32,
    then scaled back; so the decoder's numbers (and tokens) follow the CTranslate2 engine's."""

    weight_q: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = 127.0 / weight.abs().amax(dim=1).clamp(min=1e-12)
        self.register_buffer("weight_q", torch.round(weight * scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    @property
    def weight_t(self) -> torch.Tensor:
        return self.weight_q.t()

    @property
    def scale_row(self) -> torch.Tensor:
        return self.scale[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        x_scale = 127.0 / flat.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        # |x| * 127 / max |x| rounds into -127..127: no clamp needed.
        x_q = torch.round(flat * x_scale).to(torch.int8)
        # An int8 product summed in int32 (1x384 by 384x1152: ~9 us here; float32 ~35 us).
        out = torch._int_mm(x_q, self.weight_t).float().div_(x_scale * self.scale_row)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*shape[:-1], out.shape[-1])


def quantize_linears(module: nn.Module) -> None:
    """Every nn.Linear of the module replaced by an Int8Linear."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            quantize_linears(child)


class _Layer(nn.Module):
    def __init__(self, width: int, ffn: int) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        self.qkv: nn.Module = nn.Linear(width, 3 * width)
        self.self_out: nn.Module = nn.Linear(width, width)
        self.cross_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        self.cross_q: nn.Module = nn.Linear(width, width)
        self.cross_kv: nn.Module = nn.Linear(width, 2 * width)
        self.cross_out: nn.Module = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        self.fc1: nn.Module = nn.Linear(width, ffn)
        self.fc2: nn.Module = nn.Linear(ffn, width)


class _Decoder(nn.Module):
    def __init__(self, vocab: int, width: int, heads: int, layers: int, ffn: int, positions: int) -> None:
        super().__init__()
        self.heads = heads
        self.width = width
        self.embeddings = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(positions, width)
        self.layers = nn.ModuleList(_Layer(width, ffn) for _ in range(layers))
        self.blocks: list[_Layer] = [cast(_Layer, layer) for layer in self.layers]
        self.norm = nn.LayerNorm(width, eps=_LAYER_NORM_EPS)
        # Tied to the embeddings in the weights; a Linear of its own so that it can be quantized.
        self.projection: nn.Module = nn.Linear(width, vocab, bias=False)
        self.vocab = vocab

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        projection = self.projection
        if isinstance(projection, Int8Linear):
            rows = projection.weight_q[tokens].float()
            embedded: torch.Tensor = rows / projection.scale[tokens].unsqueeze(-1)
            return embedded
        out: torch.Tensor = self.embeddings(tokens)
        return out


@dataclass(slots=True)
class KVCache:
    """Self-attention keys and values of a batch of sequences: per layer (rows, positions, 2 (key,
    value), heads, head width), and how many positions of each row are valid. Cross-attention K/V
    (per window) sit beside."""

    kv: list[torch.Tensor]
    lengths: list[int]
    cross: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        """Positions a row may fill (one more is kept as scratch: where padding writes)."""
        return int(self.kv[0].shape[1]) - 1

    def select(self, rows: torch.Tensor) -> KVCache:
        """The cache of some rows, in that order (beam reordering, dropping finished rows)."""
        return KVCache(
            [t.index_select(0, rows) for t in self.kv],
            [self.lengths[int(r)] for r in rows],
            [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross],
        )

    @torch.inference_mode()
    def export(self, row: int, length: int) -> bytes:
        """The first ``length`` positions of a row, float16, layer by layer (keys, then values)."""
        parts = []
        for t in self.kv:
            for j in (0, 1):
                parts.append(t[row, :length, j].to(torch.float16).cpu().numpy().tobytes())
        return b"".join(parts)

    @torch.inference_mode()
    def load(self, row: int, data: bytes, length: int, *, stored_length: int | None = None) -> None:
        """Sets a row's first ``length`` positions from ``export`` bytes of ``stored_length`` positions
        (default: ``length``)."""
        stored = length if stored_length is None else stored_length
        shape = self.kv[0].shape[3:]
        width = int(np.prod(shape))
        array = np.frombuffer(data, np.float16)
        expected = 2 * len(self.kv) * stored * width
        if array.size != expected or not 0 <= length <= stored:
            raise ValueError(f"stored K-V holds {array.size} values; {expected} expected")
        device, dtype = self.kv[0].device, self.kv[0].dtype
        per = stored * width
        for i, t in enumerate(self.kv):
            for j in (0, 1):
                start = (2 * i + j) * per
                chunk = array[start : start + length * width].reshape(length, *shape)
                t[row, :length, j] = torch.from_numpy(chunk.copy()).to(device=device, dtype=dtype)
        self.lengths[row] = length


class TorchWhisperDecoder:
    """The decoder of a CTranslate2 Whisper directory in PyTorch (float32 on the CPU, optionally with
    int8 dynamically quantized linear layers; float16 on CUDA)."""

    def __init__(
        self, model_dir: str, *, device: str = "cpu", quantize: bool = True, threads: int = 0
    ) -> None:
        weights = read_model_bin(model_dir)
        if weights.spec != "WhisperSpec":
            raise WeightsError(f"{model_dir} holds a {weights.spec}, not a Whisper model")
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.module = _build(weights)
        self.quantized = quantize and self.device.type == "cpu"
        if self.quantized:
            quantize_linears(self.module)
            # CTranslate2 looks tokens up in the int8 embeddings it projects with: so does this,
            # from the projection's int8 rows (a float32 copy would be another 80 MB).
            self.module.embeddings.weight.data = torch.empty(0, self.module.width)
        self.module.to(device=self.device, dtype=self.dtype)
        self.module.eval()

        self.heads = self.module.heads
        self.width = self.module.width
        self.layers = len(self.module.blocks)
        self.max_positions = int(self.module.positions.weight.shape[0])
        self.vocab = self.module.vocab

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * 2 * self.width * 2

    @torch.inference_mode()
    def start(self, encoder_output: torch.Tensor | npt.NDArray[np.float32], capacity: int) -> KVCache:
        """An empty cache for a batch of windows: cross-attention K/V computed from the encoder output
        (rows, positions, width), room for ``capacity`` tokens per row."""
        enc = torch.as_tensor(encoder_output, device=self.device).to(dtype=self.dtype)
        rows = int(enc.shape[0])
        head_width = self.width // self.heads
        cross = []
        for layer in self.module.blocks:
            kv = layer.cross_kv(enc).view(rows, -1, 2, self.heads, head_width)
            cross.append((kv[:, :, 0].transpose(1, 2).contiguous(), kv[:, :, 1].transpose(1, 2).contiguous()))
        shape = (rows, capacity + 1, 2, self.heads, head_width)
        return KVCache(
            [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)],
            [0] * rows,
            cross,
        )

    @torch.inference_mode()
    def forward(
        self, cache: KVCache, tokens: torch.Tensor, counts: list[int], blocks: list[int] | None = None
    ) -> torch.Tensor:
        """Feeds ``tokens`` (rows, T; row r's first counts[r] are real, the rest padding) after each
        row's cached positions; returns the final hidden states (rows, T, width). Each row's length
        grows by its count: what padding wrote past it is never attended to and later overwritten.
        A row's first blocks[r] positions attend as one block, the others each on its own (see
        _attend): a position is computed the same way whenever it is fed the same way."""
        m = self.module
        rows, steps = tokens.shape
        start = cache.lengths
        ends = [a + b for a, b in zip(start, counts, strict=True)]
        if max(ends, default=0) > min(self.max_positions, cache.capacity):
            raise ValueError("the sequence outgrew the decoder's positions")
        positions = torch.tensor(start, dtype=torch.long)[:, None] + torch.arange(steps)[None, :]
        real = torch.arange(steps)[None, :] < torch.tensor(counts, dtype=torch.long)[:, None]
        # Padding writes its K-V to the scratch position and takes any position's embedding: its
        # outputs are never used, and a row that ended near the cap must not overflow.
        written = torch.where(real, positions, cache.capacity).to(self.device)
        used = max(ends, default=0)
        x = m.embed(tokens.to(self.device)) + m.positions(torch.where(real, positions, 0).to(self.device))
        x = x.to(self.dtype)
        row_index = torch.arange(rows, device=self.device)[:, None]
        head_width = self.width // self.heads
        for i, layer in enumerate(m.blocks):
            h = layer.self_norm(x)
            qkv = layer.qkv(h).view(rows, steps, 3, self.heads, head_width)
            # Kept at float16 precision: what a stream's state stores is then exactly what the live
            # search used, so a search continued from it chooses the same tokens.
            cache.kv[i][row_index, written] = qkv[:, :, 1:].to(torch.float16).to(self.dtype)
            q = qkv[:, :, 0].transpose(1, 2)
            k = cache.kv[i][:, :used, 0].transpose(1, 2)
            v = cache.kv[i][:, :used, 1].transpose(1, 2)
            attended = _attend(q, k, v, start, counts, blocks, causal=True)
            x = x + layer.self_out(attended.transpose(1, 2).reshape(rows, steps, self.width))
            h = layer.cross_norm(x)
            q = layer.cross_q(h).view(rows, steps, self.heads, head_width).transpose(1, 2)
            ck, cv = cache.cross[i]
            attended = _attend(q, ck, cv, start, counts, blocks, causal=False)
            x = x + layer.cross_out(attended.transpose(1, 2).reshape(rows, steps, self.width))
            h = layer.ffn_norm(x)
            x = x + layer.fc2(F.gelu(layer.fc1(h)))
        cache.lengths = ends
        out: torch.Tensor = m.norm(x)
        return out

    @torch.inference_mode()
    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of hidden states (N, width)."""
        logits: torch.Tensor = self.module.projection(hidden)
        return logits.float()


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: list[int],
    counts: list[int],
    blocks: list[int] | None,
    *,
    causal: bool,
) -> torch.Tensor:
    """Attention of the real positions (rows, heads, T, width; padding left at 0), each row on its
    own, its leading block of positions in one call and every other position alone. Attention over
    a block sums in another order than over one position; float16 K-V and int8 activations magnified
    that to ~0.1 nats, enough to flip a near tie. With int8 products summed exactly, computing a
    position the same way (alone, as a step and as a draft token verified in one pass are; or in the
    same leading block, as the prompt of a decode with and without a draft is) gives the same numbers
    whatever else is fed with it."""
    parts = []
    for r, (first, count) in enumerate(zip(start, counts, strict=True)):
        q_r, k_r, v_r = q[r : r + 1], k[r : r + 1], v[r : r + 1]
        block = min(count, blocks[r]) if blocks is not None else 0
        pieces = []
        if block:
            end = first + block if causal else k.shape[2]
            mask = None
            if causal:
                at = torch.arange(end, device=q.device)
                mask = at[None, :] <= (first + torch.arange(block, device=q.device))[:, None]
            pieces.append(
                F.scaled_dot_product_attention(
                    q_r[:, :, :block], k_r[:, :, :end], v_r[:, :, :end], attn_mask=mask
                )
            )
        if count > block:
            singles = torch.split(q_r[:, :, block:count], 1, dim=2)
            if causal:
                pieces.extend(
                    F.scaled_dot_product_attention(
                        one, k_r[:, :, : first + j + 1], v_r[:, :, : first + j + 1]
                    )
                    for j, one in enumerate(singles, block)
                )
            else:
                pieces.extend(F.scaled_dot_product_attention(one, k_r, v_r) for one in singles)
        if count < q.shape[2]:
            pieces.append(q_r.new_zeros((1, q.shape[1], q.shape[2] - count, q.shape[3])))
        parts.append(torch.cat(pieces, dim=2))
    return torch.cat(parts, dim=0)


def _tensor(weights: ModelFile, name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(weights.get(name), dtype=np.float32).copy())


def _build(weights: ModelFile) -> _Decoder:
    embeddings = weights.get("decoder/embeddings/weight")
    positions = weights.get("decoder/position_encodings/encodings")
    vocab, width = embeddings.shape
    heads = int(weights.get("decoder/num_heads"))
    layers = sum(
        1
        for name in weights.variables
        if name.endswith("/self_attention/linear_0/weight") and name.startswith("decoder/")
    )
    ffn = int(weights.get("decoder/layer_0/ffn/linear_0/weight").shape[0])
    decoder = _Decoder(int(vocab), int(width), heads, layers, ffn, int(positions.shape[0]))
    if int(weights.get("decoder/scale_embeddings")) or not int(weights.get("decoder/pre_norm")):
        raise WeightsError("the decoder is not Whisper's (pre-norm, unscaled embeddings)")

    def assign(module: nn.Module, prefix: str, *, bias: bool = True) -> None:
        linear = cast(nn.Linear, module)
        linear.weight.data = _tensor(weights, prefix + "/weight")
        if bias:
            linear.bias.data = _tensor(weights, prefix + "/bias")

    def norm(module: nn.LayerNorm, prefix: str) -> None:
        module.weight.data = _tensor(weights, prefix + "/gamma")
        module.bias.data = _tensor(weights, prefix + "/beta")

    decoder.embeddings.weight.data = _tensor(weights, "decoder/embeddings/weight")
    decoder.positions.weight.data = _tensor(weights, "decoder/position_encodings/encodings")
    assign(decoder.projection, "decoder/projection", bias=False)
    norm(decoder.norm, "decoder/layer_norm")
    for i, layer in enumerate(decoder.blocks):
        p = f"decoder/layer_{i}"
        norm(layer.self_norm, p + "/self_attention/layer_norm")
        assign(layer.qkv, p + "/self_attention/linear_0")
        assign(layer.self_out, p + "/self_attention/linear_1")
        norm(layer.cross_norm, p + "/attention/layer_norm")
        assign(layer.cross_q, p + "/attention/linear_0")
        assign(layer.cross_kv, p + "/attention/linear_1")
        assign(layer.cross_out, p + "/attention/linear_2")
        norm(layer.ffn_norm, p + "/ffn/layer_norm")
        assign(layer.fc1, p + "/ffn/linear_0")
        assign(layer.fc2, p + "/ffn/linear_1")
    return decoder
