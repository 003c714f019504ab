"""AdamW groups (what is decayed), ViT layer-wise LR decay, warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from qwenvl.families import from_hf_dict
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.train.config import OptimConfig
from qwenvl.train.optim import WarmupCosine, build_optimizer, decays, lr_scale, param_groups, vit_layer_id
from tests.train.test_loop import v1_arch, v2_arch


def _names(groups, decay: bool) -> set[str]:
    return {n for g in groups if (g["weight_decay"] > 0) == decay for n in g["names"]}


def test_no_decay_on_norms_biases_embeddings_and_1d():
    model = QwenVLModel(from_hf_dict(v1_arch()))
    groups = param_groups(model, 0.05)
    no_decay, decay = _names(groups, False), _names(groups, True)
    assert no_decay | decay == {n for n, _ in model.named_parameters()}
    for n in ("model.embed_tokens.weight", "visual.positional_embedding", "visual.attn_pool.query",
              "model.norm.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.bias",
              "visual.ln_post.weight", "visual.ln_post.bias", "visual.attn_pool.attn.in_proj_bias",
              "visual.transformer.resblocks.0.attn.in_proj.bias"):
        assert n in no_decay, n
    for n in ("lm_head.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
              "visual.proj", "visual.conv1.weight", "visual.attn_pool.kv_proj.weight",
              "visual.transformer.resblocks.1.mlp.fc1.weight"):
        assert n in decay, n
    assert all(p.ndim >= 2 for g in groups if g["weight_decay"] for p in g["params"])


def test_frozen_params_are_left_out():
    model = QwenVLModel(from_hf_dict(v1_arch()))
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    names = {n for g in param_groups(model, 0.05) for n in g["names"]}
    assert names and all(n.startswith("visual.") for n in names)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(model, 0.05)


def test_vit_layer_decay_v1_and_v2():
    d = 0.9
    assert vit_layer_id("visual.conv1.weight", 2) == 0
    assert vit_layer_id("visual.transformer.resblocks.1.ln_1.weight", 2) == 2
    assert vit_layer_id("visual.attn_pool.query", 2) == 3 and vit_layer_id("model.norm.weight", 2) is None
    assert lr_scale("visual.positional_embedding", 2, d) == pytest.approx(d ** 3)
    assert lr_scale("visual.transformer.resblocks.0.attn.in_proj.weight", 2, d) == pytest.approx(d ** 2)
    assert lr_scale("visual.transformer.resblocks.1.attn.in_proj.weight", 2, d) == pytest.approx(d)
    assert lr_scale("visual.proj", 2, d) == 1.0 and lr_scale("lm_head.weight", 2, d) == 1.0
    assert lr_scale("visual.patch_embed.proj.weight", 4, d) == pytest.approx(d ** 5)  # v2 names
    assert lr_scale("visual.blocks.3.attn.qkv.weight", 4, d) == pytest.approx(d)
    assert lr_scale("visual.merger.mlp.0.weight", 4, d) == 1.0
    # PEFT-wrapped names keep their layer
    assert vit_layer_id("visual.blocks.0.attn.qkv.base_layer.weight", 4) == 1
    assert not decays("model.embed_tokens.modules_to_save.default.weight", torch.zeros(3, 3))


def test_optimizer_groups_and_hyperparameters():
    model = QwenVLModel(from_hf_dict(v2_arch()))
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6, vit_layer_decay=0.95)
    opt = build_optimizer(model, cfg)
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-6 for g in opt.param_groups)
    scales = sorted({round(g["lr_scale"], 6) for g in opt.param_groups})
    assert scales == sorted({round(0.95 ** k, 6) for k in range(0, 4)})  # depth 2: stem, 2 blocks, rest
    sched = WarmupCosine.from_config(opt, cfg, total_steps=10)
    sched.apply(0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(sched.lr_at(0) * g["lr_scale"])


def test_warmup_cosine_shape():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    s = WarmupCosine(opt, peak=1.0, min_lr=0.1, total_steps=14, warmup_steps=4)
    assert [s.lr_at(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.lr_at(4) == pytest.approx(1.0)
    assert s.lr_at(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # midpoint 0.55
    assert s.lr_at(13) > 0.1 and s.lr_at(14) == 0.1 and s.lr_at(100) == 0.1
    lrs = [s.lr_at(i) for i in range(4, 15)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    r = WarmupCosine(opt, peak=1.0, min_lr=0.0, total_steps=100, warmup_ratio=0.05)
    assert r.warmup == 5 and r.lr_at(4) == 1.0
    r2 = WarmupCosine(opt, 0.5, 0.0)
    r2.load_state_dict(r.state_dict())
    assert [r2.lr_at(i) for i in range(100)] == [r.lr_at(i) for i in range(100)]
