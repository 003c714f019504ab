"""The Qwen3-VL-MoE sparse MLP block: a top-k softmax router over E SwiGLU experts stored as 3-D tensors.

Mirrors transformers' `Qwen3VLMoeTextSparseMoeBlock` (router `Qwen3VLMoeTextTopKRouter`, experts
`Qwen3VLMoeTextExperts`) with its in-memory (transformers 5) parameter layout, under the decoder layer's
`mlp.`:
    gate.weight              [E, H]       router logits = x @ W.T
    experts.gate_up_proj     [E, 2I, H]   rows [0, I) gate, [I, 2I) up (a linear weight per expert)
    experts.down_proj        [E, H, I]
The router takes softmax in fp32, keeps the top k, renormalises them to sum 1 and casts them back to
the logits' dtype, exactly as the reference.

The experts run as two grouped matmuls, not one call per expert: the S*k (token, expert) slots are
sorted by expert (stable, so token order holds within an expert), and F.grouped_mm multiplies every
expert's contiguous row block by its weight in one kernel; a weighted index_add scatters the slots
back to their tokens. Example, S = 2 tokens, k = 2, experts [[3, 0], [0, 2]]: slots sorted by expert
are (t0, e0) (t1, e0) (t1, e2) (t0, e3), group ends offs = [2, 2, 3, 4]. No host sync, and one
weight-gradient tensor per projection in the backward.
Where grouped_mm is unavailable (torch < 2.11 on CPU; CUDA without bf16 on SM80+) a loop over the
experts that got tokens does the same sorted blocks with F.linear.

Measured on this project's CPU box (2 shared cores, torch 2.13, median ms, no grad; E 64, H 1024, I 512,
k 8; options: grouped_mm | loop over experts | gathered bmm of per-slot weight copies):
    fp32  S=1: 1.8 | 1.8 | 19.6     S=8: 13.7 | 15.9 | 251    S=64: 36.7 | 42.2 | 1891   S=512: 149 | 145
    bf16  S=1: 3.1 | 3.0 | 8.9      S=8: 17.7 | 21.6 | 147    S=64: 26.3 | 32.7 | 1110   S=512: 73-1122 | 59-814
    full size (E 128, H 2048, I 768) bf16 S=1: 7.9 | 7.9 | 39   S=8: 46 | 52 | 314   S=512: 177 | 211
    training step (fwd+bwd, bf16 autocast, fp32 weights, S=512, E 64): grouped 0.51 s; loop over
    w.unbind(0) 0.88 s; loop indexing w[e] 11.9 s (each slice's backward writes a full [E, ...] gradient)
The gathered bmm copies k weight matrices per token and loses everywhere; grouped_mm ties the loop at
decode and prefill sizes, wins at training and never syncs with the host, so it is the one used (the
fallback loop uses unbind). The shared box is noisy: bf16 S=512 ranged 10x across runs.
Pure tensor code: imports torch and qwenvl only, no I/O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwenvl.config import TextConfig
from qwenvl.model.layers import activation

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])  # (2, 13); "2.9" < "2.11" as ints


def grouped_mm_supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether F.grouped_mm runs for x [S, in] against w [E, out, in] on this device and dtype."""
    if _GROUPED_MM is None:
        return False
    if x.device.type == "cpu":  # CPU kernel since 2.9; 16-byte alignment demands up to 2.10
        return _TORCH >= (2, 11)
    if x.device.type == "cuda":
        return (w.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
                and x.shape[-1] % 8 == 0 and w.shape[-2] % 8 == 0)
    return False


def grouped_linear(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x [S, in] sorted into E contiguous groups of counts [E] rows; row block e times w[e].T -> [S, out].

    w: [E, out, in] (linear weights). Under autocast both operands are cast to the autocast dtype
    (grouped_mm is not autocast-aware; F.linear in the reference is).
    """
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else w.dtype
    x, w = x.to(dtype), w.to(dtype)
    if grouped_mm_supported(x, w):
        return _GROUPED_MM(x, w.transpose(1, 2), offs=counts.cumsum(0).to(torch.int32))
    outs, start = [], 0
    for n, we in zip(counts.tolist(), w.unbind(0), strict=True):  # unbind: one weight-grad tensor, not E full-size ones
        if n:
            outs.append(F.linear(x[start:start + n], we))
            start += n
    return torch.cat(outs) if outs else x.new_zeros(0, w.shape[1])


class MoeRouter(nn.Module):
    """`mlp.gate`: logits [S, E] = x @ weight.T; softmax (fp32), top-k, renormalise."""

    def __init__(self, hidden: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [S, H] -> (weights [S, k] in the logits' dtype, experts [S, k] long, logits [S, E])."""
        logits = F.linear(x, self.weight)
        probs = logits.softmax(-1, dtype=torch.float32)
        top, idx = probs.topk(self.top_k, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        return top.to(logits.dtype), idx, logits


class MoeExperts(nn.Module):
    """`mlp.experts`: E SwiGLU experts, down(silu(gate(x)) * up(x)), as stacked 3-D weights."""

    def __init__(self, hidden: int, inter: int, num_experts: int, act: str = "silu") -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inter))
        nn.init.normal_(self.gate_up_proj, std=0.02)
        nn.init.normal_(self.down_proj, std=0.02)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [S, H], experts / weights [S, k] -> sum_j weights[:, j] * expert_{experts[:, j]}(x)  [S, H]."""
        k = experts.shape[1]
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)  # slot s*k + j -> position in expert-sorted order
        token = order // k
        counts = torch.bincount(flat, minlength=self.num_experts)
        gate, up = grouped_linear(x[token], self.gate_up_proj, counts).chunk(2, dim=-1)
        y = grouped_linear(self.act(gate) * up, self.down_proj, counts)
        y = y * weights.reshape(-1)[order, None]
        return x.new_zeros(x.shape).index_add(0, token, y.to(x.dtype))


class SparseMoeBlock(nn.Module):
    """The decoder layer's `mlp` on MoE layers: [B, T, H] -> [B, T, H]."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate = MoeRouter(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok)
        self.experts = MoeExperts(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, experts, _ = self.gate(flat)
        return self.experts(flat, experts, weights).view(x.shape)
