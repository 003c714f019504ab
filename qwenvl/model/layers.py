"""Small building blocks shared by every generation: norms, MLPs, activations.

Pure tensor code. Parameter names match the Hugging Face checkpoints so weights.py maps keys 1:1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = w * (x / rms(x)); normalised in fp32 and cast back before the weight (as the reference)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with a one-row bf16 CPU path: a decode step's x [1, K] (or [1, 1, K]) goes through
    torch.mv(W, x), which streams the weight at 15-20 GB/s on the bench Xeon where F.linear's bf16 GEMV
    reaches 8-13 GB/s (1.3-1.6x on every Qwen2-VL-2B decoder shape, bench/RESULTS.md). Training, fp32
    and calls with several rows take F.linear unchanged."""
    if (x.dtype is torch.bfloat16 and w.dtype is torch.bfloat16 and x.device.type == "cpu"
            and x.numel() == x.shape[-1] and not torch.is_grad_enabled()):
        y = torch.mv(w, x.reshape(-1))
        if b is not None:
            y = y + b
        return y.view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w, b)


class Linear(nn.Linear):
    """nn.Linear over `linear` (same weights, same checkpoint keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,  # exact erf GELU
    "quick_gelu": quick_gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)). Decoder (no bias) and Qwen2.5-VL ViT (bias)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, act: str = "silu") -> None:
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=bias)
        self.up_proj = Linear(dim, hidden, bias=bias)
        self.down_proj = Linear(hidden, dim, bias=bias)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nn.Module):
    """fc2(act(fc1(x))). Qwen2-VL ViT (QuickGELU) and Qwen-VL v1 ViT (exact GELU)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
