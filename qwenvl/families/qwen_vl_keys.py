"""Qwen-VL v1 checkpoint keys (`transformer.*`, architecture-facts A.6) <-> our module names.

The Qwen-VL family's checkpoint key map (families/qwen_vl.py); this module holds the renames and the one split:

  official                                        ours
  transformer.wte.weight                          model.embed_tokens.weight
  transformer.h.{i}.ln_1.weight                   model.layers.{i}.input_layernorm.weight
  transformer.h.{i}.ln_2.weight                   model.layers.{i}.post_attention_layernorm.weight
  transformer.h.{i}.attn.c_attn.{weight,bias}     model.layers.{i}.self_attn.{q,k,v}_proj.*  (contiguous [q|k|v])
  transformer.h.{i}.attn.c_proj.weight            model.layers.{i}.self_attn.o_proj.weight
  transformer.h.{i}.mlp.w2.weight                 model.layers.{i}.mlp.gate_proj.weight       (w2 is the SiLU side)
  transformer.h.{i}.mlp.w1.weight                 model.layers.{i}.mlp.up_proj.weight
  transformer.h.{i}.mlp.c_proj.weight             model.layers.{i}.mlp.down_proj.weight
  transformer.ln_f.weight                         model.norm.weight
  lm_head.weight                                  lm_head.weight
  transformer.visual.X                            visual.X, except resblocks' mlp.c_fc / mlp.c_proj -> mlp.fc1 / mlp.fc2

The ViT's interleaved `attn.in_proj` is kept in the official layout (see model/vision_v1.py), so no
visual tensor is permuted and official -> ours -> official is bit-exact. The official spelling is the
canonical one: weights.py's strict key check compares in it, so a refusal names the keys as the
checkpoint has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from qwenvl.config import QwenVLConfig

_LLM = {  # per-layer suffix renames (the fused c_attn is handled separately)
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_LLM_BACK = {v: k for k, v in _LLM.items()}
_TOP = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight"}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_VIT_MLP = {"mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
_VIT_MLP_BACK = {v: k for k, v in _VIT_MLP.items()}

_OFF_LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)")
_OUR_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_RESBLOCK = re.compile(r"(transformer\.resblocks\.\d+\.)(mlp\.c_fc\.|mlp\.c_proj\.|mlp\.fc1\.|mlp\.fc2\.)(.+)")
QKV = ("q_proj", "k_proj", "v_proj")


def _vit_rename(rest: str, table: dict[str, str]) -> str:
    m = _RESBLOCK.fullmatch(rest)
    if m and m.group(2) in table:
        return m.group(1) + table[m.group(2)] + m.group(3)
    return rest


def rename(key: str) -> str | list[str]:
    """An official key -> our key, or the three q/k/v keys for a fused c_attn. Unknown keys unchanged."""
    if key.startswith("transformer.visual."):
        return "visual." + _vit_rename(key[len("transformer.visual."):], _VIT_MLP)
    if key in _TOP:
        return _TOP[key]
    m = _OFF_LAYER.fullmatch(key)
    if m:
        i, rest = m.groups()
        base = f"model.layers.{i}."
        if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            return [f"{base}self_attn.{p}.{kind}" for p in QKV]
        if rest in _LLM:
            return base + _LLM[rest]
    return key


def v1_iter(tensors: Iterable[tuple[str, torch.Tensor]], cfg: QwenVLConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (official key, tensor) -> (our key, tensor); one checkpoint tensor in flight at a time.

    A fused c_attn becomes three copies of its [q|k|v] row blocks: independent tensors, so nothing
    loaded shares storage (safetensors refuses to save shared tensors).
    """
    for key, t in tensors:
        new = rename(key)
        if isinstance(new, list):
            yield from zip(new, (c.clone() for c in t.chunk(3, dim=0)), strict=True)
        elif not (cfg.tie_word_embeddings and new == "lm_head.weight"):
            yield new, t


def v1_export(state: dict[str, torch.Tensor], cfg: QwenVLConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> the official state dict (c_attn re-fused as cat([q, k, v]))."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.startswith("visual."):
            out["transformer.visual." + _vit_rename(key[len("visual."):], _VIT_MLP_BACK)] = t
            continue
        if key in _TOP_BACK:
            out[_TOP_BACK[key]] = t
            continue
        m = _OUR_LAYER.fullmatch(key)
        if not m:
            raise ValueError(f"no Qwen-VL checkpoint name for model key {key}")
        i, rest = m.groups()
        base = f"transformer.h.{i}."
        if rest in _LLM_BACK:
            out[base + _LLM_BACK[rest]] = t
            continue
        proj, _, kind = rest.removeprefix("self_attn.").partition(".")
        if not rest.startswith("self_attn.") or proj not in QKV:
            raise ValueError(f"no Qwen-VL checkpoint name for model key {key}")
        if proj == "q_proj":  # fuse once, on the q key; k and v must be present
            parts = [state[f"model.layers.{i}.self_attn.{p}.{kind}"] for p in QKV]
            out[f"{base}attn.c_attn.{kind}"] = torch.cat(parts, dim=0)
    return out
