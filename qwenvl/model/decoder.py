"""The text decoder: pre-RMSNorm blocks, GQA attention, SwiGLU (dense or sparse MoE), RoPE / M-RoPE.

Mirrors transformers' `Qwen2_5_VLTextModel` (facts B.6-B.7) and, by knobs, `Qwen3VLTextModel` /
`Qwen3VLMoeTextModel` (facts C): explicit `head_dim`, `qk_norm` (per-head RMSNorm on q and k before
RoPE), interleaved M-RoPE (`mrope_interleaved`), MoE layers where `cfg.is_moe_layer(i)` (moe.py) and
DeepStack injection of vision features after the first layers. Qwen-VL v1's QWenModel is the same
computation under other key names (weights.py renames) plus its inference-time NTK / log-n tricks.
forward() takes embeddings, explicit positions and an optional engine-owned KV cache; it never reads
input_ids and never allocates the cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qwenvl.config import TextConfig
from qwenvl.model.attention import LayerCache, causal_attention, ragged_causal_mask
from qwenvl.model.layers import GatedMLP, Linear, RMSNorm
from qwenvl.model.moe import SparseMoeBlock
from qwenvl.model.rope import apply_rope, inv_freq, mrope_axis_map, text_cos_sin


@dataclass
class KVCache:
    """Engine-owned cache: k, v [L, N, Hkv, S_max, D]. The model writes into it, never allocates it.

    rows: None (batch row b is cache row b) or [B] long, the cache rows of the batch rows (an engine's
    slot pool, attention.LayerCache).
    """

    k: torch.Tensor
    v: torch.Tensor
    rows: torch.Tensor | None = None

    @classmethod
    def allocate(cls, cfg: TextConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> KVCache:
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def layer(self, i: int, start: int | torch.Tensor) -> LayerCache:
        return LayerCache(self.k[i], self.v[i], start, self.rows)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.h, self.kv, self.d = h, kv, d
        self.q_proj = Linear(cfg.hidden_size, h * d, bias=cfg.attention_bias)
        self.k_proj = Linear(cfg.hidden_size, kv * d, bias=cfg.attention_bias)
        self.v_proj = Linear(cfg.hidden_size, kv * d, bias=cfg.attention_bias)
        self.o_proj = Linear(h * d, cfg.hidden_size, bias=False)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's d channels
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm

    def forward(self, x, cos, sin, mask, cache: LayerCache | None, q_scale: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d)
        k = self.k_proj(x).view(b, t, self.kv, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        # cos/sin in fp32 (v1) rotate in fp32 and cast back; in the model dtype this is a plain rotation
        q = apply_rope(q.to(cos.dtype), cos, sin).to(v.dtype)
        k = apply_rope(k.to(cos.dtype), cos, sin).to(v.dtype)
        if q_scale is not None:  # v1 log-n attention scaling beyond seq_length
            q = q * q_scale.to(q.dtype)[:, None, :, None]
        out = causal_attention(q, k, v, mask, cache)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(index):
            self.mlp = SparseMoeBlock(cfg)
        else:
            self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, cache, q_scale) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, q_scale)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextDecoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.reset_buffers(None)
        self.gradient_checkpointing = False

    def reset_buffers(self, device: torch.device | str | None) -> None:
        """(Re)build the RoPE tables; called again after a meta-device build."""
        cfg = self.cfg
        self.register_buffer("inv_freq", inv_freq(cfg.head_dim, cfg.rope_theta, device), persistent=False)
        axis = None
        if cfg.mrope_section is not None:
            axis = mrope_axis_map(cfg.mrope_section, cfg.mrope_interleaved).to(device)
        self.register_buffer("axis_map", axis, persistent=False)

    def rope_freqs(self, seq_len: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Dynamic NTK (v1, inference only): grow the base once the prompt exceeds seq_length.

        seq_len: one length -> [D/2]; one length per batch row ([B] list or tensor) -> [B, 1, D/2] when
        any row is past seq_length (each row its own base, broadcast over T by text_cos_sin), else [D/2].
        """
        cfg = self.cfg
        if not cfg.use_dynamic_ntk or self.training:
            return self.inv_freq
        if not isinstance(seq_len, int):
            lens = [int(n) for n in (seq_len.tolist() if isinstance(seq_len, torch.Tensor) else seq_len)]
            if max(lens) <= cfg.seq_length:
                return self.inv_freq
            return torch.stack([self.rope_freqs(n) for n in lens])[:, None]
        if seq_len <= cfg.seq_length:
            return self.inv_freq
        alpha = max(2 ** math.ceil(math.log2(seq_len / cfg.seq_length) + 1) - 1, 1)
        d = cfg.head_dim
        return inv_freq(d, cfg.rope_theta * alpha ** (d / (d - 2)), self.inv_freq.device)

    def split_deepstack(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, D*(1+k)] -> (embeddings [B, T, D], deepstack levels [B, T, k, D] or None when k = 0)."""
        d, width = self.cfg.hidden_size, embeds.shape[-1]
        if width == d:
            return embeds, None
        k = width // d - 1
        if width % d or not 0 < k <= len(self.layers):
            raise ValueError(f"embeds width {width} is neither hidden_size {d} nor hidden_size * (1 + k) "
                             f"with 1 <= k <= {len(self.layers)} deepstack levels")
        return embeds[..., :d], embeds[..., d:].unflatten(-1, (k, d))

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, start: int | torch.Tensor = 0,
                ntk_len: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """embeds [B, T, D] or [B, T, D*(1+k)], positions [3, B, T] (M-RoPE) or [B, T] -> hidden [B, T, D].

        mask: [B, 1, T, start+T] bool or None (plain causal from 0). cache/start: engine-owned KV cache
        and the absolute slot of the first new token, an int for the whole batch or a [B] long tensor
        per row (then a None mask means ragged_causal_mask: each row sees only its own [0, start+T)).
        ntk_len: sequence length that fixes the v1 dynamic-NTK base (the prefill length; reused while
        decoding), one int or one per row.

        DeepStack (Qwen3-VL): the wide form is what QwenVLModel.embed builds for a prompt with vision
        features: channels [0, D) are the input embeddings, [D*(1+j), D*(2+j)) deepstack level j, zero at
        text positions. After layer i (i < k) level i is added to the hidden state: at visual slots this
        is the reference's `_deepstack_process`, at text slots it adds exact zeros. Example, D = 2, k = 2,
        a text token t then an image token v:
            embeds[b] = [[t0 t1 | 0  0  | 0  0 ],
                         [v0 v1 | a0 a1 | c0 c1]]
            layer 0 -> h[v] += (a0, a1);  layer 1 -> h[v] += (c0, c1);  h[t] gets nothing extra.
        Decode steps (text only) pass plain width-D embeds.
        """
        x, deep = self.split_deepstack(embeds)
        if isinstance(start, torch.Tensor) and mask is None:
            mask = ragged_causal_mask(start, x.shape[1])
        freqs = self.rope_freqs(ntk_len if ntk_len is not None else start + x.shape[1])
        # v1 (1-D RoPE) rotates in fp32 (facts A.5); Qwen2/2.5/3-VL rotate in the model dtype (cos/sin cast)
        rope_dtype = torch.float32 if self.cfg.mrope_section is None else x.dtype
        cos, sin = text_cos_sin(positions, freqs, self.axis_map, rope_dtype)
        q_scale = None
        if self.cfg.use_logn_attn and not self.training:
            pos1 = (positions if positions.dim() == 2 else positions[0]).float() + 1
            q_scale = torch.where(pos1 > self.cfg.seq_length, pos1.log() / math.log(self.cfg.seq_length),
                                  torch.ones_like(pos1))
        for i, layer in enumerate(self.layers):
            lc = cache.layer(i, start) if cache is not None else None
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, lc, q_scale, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, lc, q_scale)
            if deep is not None and i < deep.shape[2]:
                x = x + deep[:, :, i]
        return self.norm(x)
