"""Stage policies select exactly the intended parameters; v1 stage-2 resolution change."""

from __future__ import annotations

import pytest
import torch

from qwenvl.families import from_hf_dict
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.train.config import StageConfig
from qwenvl.train.freeze import apply_policy, apply_stage, param_group, set_image_size
from tests.train.test_loop import v1_arch, v2_arch

V1_ADAPTER = ("visual.attn_pool.",)
V1_VISION_OUTSIDE_ADAPTER = ("visual.conv1.", "visual.positional_embedding", "visual.ln_pre.", "visual.transformer.",
                             "visual.ln_post.", "visual.proj")


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def v1():
    return QwenVLModel(from_hf_dict(v1_arch()))


def _expected(model, llm: bool, adapter: bool, vision: bool) -> set[str]:
    out = set()
    for n, _ in model.named_parameters():
        if n.startswith(("model.", "lm_head")):
            ok = llm
        elif n.startswith(V1_ADAPTER):
            ok = adapter
        else:
            assert n.startswith(V1_VISION_OUTSIDE_ADAPTER), n
            ok = vision
        if ok:
            out.add(n)
    return out


@pytest.mark.parametrize("policy,llm,adapter,vision", [
    ("stage0_text", True, False, False),
    ("stage1", False, True, True),
    ("stage2", True, True, True),
    ("stage3", True, True, False),
    ("fix_vit", True, True, False),
    ("full", True, True, True),
])
def test_v1_policies(v1, policy, llm, adapter, vision):
    counts = apply_stage(v1, StageConfig(policy=policy))
    assert _trainable(v1) == _expected(v1, llm, adapter, vision)
    assert sum(counts.values()) == sum(p.numel() for p in v1.parameters() if p.requires_grad)


def test_fix_vit_is_the_official_policy(v1):
    """finetune.py fix_vit: transformer.visual frozen except attn_pool (ln_post and proj stay frozen)."""
    apply_stage(v1, StageConfig(policy="fix_vit"))
    visual = {n for n in _trainable(v1) if n.startswith("visual.")}
    assert visual and all(n.startswith("visual.attn_pool.") for n in visual)
    assert not any(n.startswith(("visual.ln_post", "visual.proj")) for n in _trainable(v1))
    assert "lm_head.weight" in _trainable(v1) and "model.embed_tokens.weight" in _trainable(v1)


def test_custom_policy_and_v2_merger_is_the_adapter():
    m = QwenVLModel(from_hf_dict(v2_arch()))
    apply_stage(m, StageConfig(policy="custom", trainable=("adapter",)))
    assert _trainable(m) == {n for n, _ in m.named_parameters() if n.startswith("visual.merger.")}
    assert param_group("visual.blocks.0.attn.qkv.weight", ("visual.merger.",)) == "vision"
    assert param_group("lm_head.weight", ("visual.merger.",)) == "llm"
    apply_policy(m, set())
    assert not _trainable(m)


def test_qwen3_deepstack_mergers_are_adapter_too():
    """Qwen3-VL's DeepStack mergers map ViT features into the LLM, so stage 3 (ViT frozen) trains them."""
    m = QwenVLModel(from_hf_dict(v2_arch("qwen3_vl")))
    apply_stage(m, StageConfig(policy="stage3"))
    visual = {n for n in _trainable(m) if n.startswith("visual.")}
    assert any(n.startswith("visual.deepstack_merger_list.") for n in visual)
    assert visual == {n for n, _ in m.named_parameters()
                      if n.startswith(("visual.merger.", "visual.deepstack_merger_list."))}
    assert not any(n.startswith(("visual.blocks.", "visual.pos_embed", "visual.patch_embed")) for n in visual)


def test_v1_resolution_change_for_stage2():
    m = QwenVLModel(from_hf_dict(v1_arch()))  # 28 px, 2x2 position table
    old = m.visual.positional_embedding.detach().clone()
    apply_stage(m, StageConfig(policy="stage2", image_size=56, resize_pos_embed=True))
    assert m.cfg.vision.image_size == 56 and m.cfg.vision.pos_embed_grid == 4 and m.visual.cfg is m.cfg.vision
    assert m.visual.positional_embedding.shape == (16, old.shape[1]) and m.visual.positional_embedding.requires_grad
    # the resized table gives what on-the-fly interpolation of the old one gave
    from qwenvl.model.resampler import resize_pos_table

    torch.testing.assert_close(m.visual.positional_embedding.detach(), resize_pos_table(old, 4))
    assert m.encode_images(torch.randn(1, 3, 56, 56)).shape == (4, 128)
    keep = QwenVLModel(from_hf_dict(v1_arch()))
    set_image_size(keep, 56, resize_pos_embed=False)
    assert keep.cfg.vision.image_size == 56 and keep.visual.positional_embedding.shape[0] == 4
    with pytest.raises(ValueError, match="multiple of the patch size"):
        set_image_size(keep, 50, False)
    with pytest.raises(ValueError, match="v1 tower only"):
        set_image_size(QwenVLModel(from_hf_dict(v2_arch())), 56, False)
