"""Whisper's encoder in PyTorch on a CTranslate2 model.bin: measured against CTranslate2's encoder
(benchmarks/torch_decoder.py) to choose which one the torch engine uses. CTranslate2's won (see
benchmarks/README.md), so the engine encodes with CTranslate2; this stays for the measurement."""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from voxwire_server.engines.ct2_weights import WeightsError, read_model_bin
from voxwire_server.engines.torch_decoder import quantize_linears

__all__ = ["TorchWhisperEncoder"]


class _Block(nn.Module):
    def __init__(self, width: int, ffn: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.qkv: nn.Module = nn.Linear(width, 3 * width)
        self.out: nn.Module = nn.Linear(width, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.fc1: nn.Module = nn.Linear(width, ffn)
        self.fc2: nn.Module = nn.Linear(ffn, width)


class TorchWhisperEncoder(nn.Module):
    """Log-mel features (batch, 80, frames) to encoder states (batch, frames / 2, width)."""

    def __init__(self, model_dir: str, *, quantize: bool = True, threads: int = 0) -> None:
        super().__init__()
        weights = read_model_bin(model_dir)
        if weights.spec != "WhisperSpec":
            raise WeightsError(f"{model_dir} holds a {weights.spec}, not a Whisper model")
        if threads > 0:
            torch.set_num_threads(threads)

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(weights.get(name), dtype=np.float32).copy())

        conv1, conv2 = tensor("encoder/conv1/weight"), tensor("encoder/conv2/weight")
        width = int(conv1.shape[0])
        self.heads = int(weights.get("encoder/num_heads"))
        self.conv1 = nn.Conv1d(int(conv1.shape[1]), width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.conv1.weight, self.conv1.bias = nn.Parameter(conv1), nn.Parameter(tensor("encoder/conv1/bias"))
        self.conv2.weight, self.conv2.bias = nn.Parameter(conv2), nn.Parameter(tensor("encoder/conv2/bias"))
        self.positions = tensor("encoder/position_encodings/encodings")
        count = sum(
            1 for n in weights.variables if n.startswith("encoder/layer_") and n.endswith("/linear_0/weight")
        )
        ffn = int(weights.get("encoder/layer_0/ffn/linear_0/weight").shape[0])
        self.layers = nn.ModuleList(_Block(width, ffn) for _ in range(count // 2))
        self.blocks: list[_Block] = [cast(_Block, b) for b in self.layers]
        for i, block in enumerate(self.blocks):
            p = f"encoder/layer_{i}"
            for norm, name in ((block.attention_norm, "self_attention"), (block.ffn_norm, "ffn")):
                norm.weight.data, norm.bias.data = (
                    tensor(f"{p}/{name}/layer_norm/gamma"),
                    tensor(f"{p}/{name}/layer_norm/beta"),
                )
            for module, name in (
                (block.qkv, "self_attention/linear_0"),
                (block.out, "self_attention/linear_1"),
                (block.fc1, "ffn/linear_0"),
                (block.fc2, "ffn/linear_1"),
            ):
                linear = cast(nn.Linear, module)
                linear.weight.data, linear.bias.data = (
                    tensor(f"{p}/{name}/weight"),
                    tensor(f"{p}/{name}/bias"),
                )
        self.norm = nn.LayerNorm(width)
        self.norm.weight.data, self.norm.bias.data = (
            tensor("encoder/layer_norm/gamma"),
            tensor("encoder/layer_norm/beta"),
        )
        if quantize:
            quantize_linears(self)
        self.eval()

    @torch.inference_mode()
    def encode(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).transpose(1, 2)
        rows, positions, width = x.shape
        x = x + self.positions[:positions]
        head_width = width // self.heads
        for block in self.blocks:
            h = block.attention_norm(x)
            qkv = block.qkv(h).view(rows, positions, 3, self.heads, head_width).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            x = x + block.out(attended.transpose(1, 2).reshape(rows, positions, width))
            x = x + block.fc2(F.gelu(block.fc1(block.ffn_norm(x))))
        out: npt.NDArray[np.float32] = self.norm(x).numpy()
        return out
