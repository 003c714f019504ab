"""LoRA through PEFT: targets, training, merge == PEFT output, export loads with the production loader."""

from __future__ import annotations

import re

import pytest
import torch

from qwenvl.families import from_hf_dict
from qwenvl.model.qwenvl import QwenVLModel
from qwenvl.train.batch import forward_loss
from qwenvl.train.config import LoraConfig
from qwenvl.train.lora import OFFICIAL_V1_TARGETS, apply_lora, export_merged, lora_parameters, target_pattern
from tests.train.test_loop import FakeExamples, fake_source, one_thread, v1_arch  # noqa: F401 (autouse)

pytest.importorskip("peft")


def test_targets_are_the_decoder_projections_only():
    model = QwenVLModel(from_hf_dict(v1_arch()))
    official = tuple(t for ours in OFFICIAL_V1_TARGETS.values() for t in ours)
    pat = re.compile(target_pattern(official))
    hit = {n for n, _ in model.named_modules() if pat.fullmatch(n)}
    layers = model.cfg.text.num_hidden_layers
    assert len(hit) == 6 * layers
    assert all(n.startswith("model.layers.") for n in hit)
    assert not any(n.endswith("down_proj") for n in hit)  # mlp.c_proj is not an official target
    assert {n.rsplit(".", 1)[1] for n in hit} == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj"}
    with pytest.raises(ValueError):
        target_pattern(["c_attn"])


def test_lora_trains_merges_and_exports(tmp_path):
    torch.manual_seed(0)
    model = QwenVLModel(from_hf_dict(v1_arch())).train()
    peft_model = apply_lora(model, LoraConfig(enabled=True, r=8, alpha=16, dropout=0.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model)) and trainable
    src = fake_source(model.cfg, n=4)
    batch = src.collate([FakeExamples(model.cfg)[i] for i in range(4)])  # text, image, two images, text
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(8):
        loss = forward_loss(model, batch)  # our model object, adapters injected in place
        loss.backward()
        if step == 0:
            with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
            assert with_grad == trainable  # only LoRA weights receive gradients
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses

    model.eval()
    with torch.no_grad():
        before = forward_loss(model, batch, reduction="none")
        feats = model.encode_images(batch.image_pixels)
        peft_logits = model.logits(model(model.embed(batch.input_ids, feats), batch.positions))
    folder = export_merged(peft_model, tmp_path / "merged")  # merges into `model` in place
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        merged_logits = model.logits(model(model.embed(batch.input_ids, model.encode_images(batch.image_pixels)),
                                           batch.positions))
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=1e-5)

    from qwenvl.weights import load_model

    loaded = load_model(folder)
    with torch.no_grad():
        after = forward_loss(loaded, batch, reduction="none")
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
