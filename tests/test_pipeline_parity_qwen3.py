"""Qwen3-VL end to end against transformers: messages -> (our processor, our model) vs (the reference
tokenizer + chat template + image processor, the reference model), dense and MoE.

A tiny random checkpoint saved by transformers, with the real Qwen3-VL tokenizer and chat template,
is loaded with `qwenvl.load`. A multi-turn chat with an image in each of two turns (sizes that are
not multiples of the 32 px merge unit): identical prompt ids, pixels and grids, logits within 1e-4
(fp32), and an identical 24-token greedy continuation. The engine's batched path gives each
conversation the tokens it gets alone (DeepStack rows, per-row cache lengths and M-RoPE deltas).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.engine.engine import Engine
from tests.fixtures.hf_tiny_qwen3 import make_hf_checkpoint
from tests.fixtures.qwen3_tokenizer import QWEN3_VL_PREPROCESSOR, write_qwen3_vl_folder

IMG = 151655


def image(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "image", "image": image(300, 200, 1)},
                                 {"type": "text", "text": "What is in this picture?"}]},
    {"role": "assistant", "content": "Noise, mostly."},
    {"role": "user", "content": [{"type": "text", "text": "And this one"},
                                 {"type": "image", "image": image(230, 410, 2)},
                                 {"type": "text", "text": "— where is the brightest spot?"}]},
]


@pytest.fixture(scope="module", params=["dense", "moe"])
def ckpt(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("q3pipe_" + request.param)
    hf = make_hf_checkpoint(folder, moe=request.param == "moe", seed=5)
    write_qwen3_vl_folder(folder)
    return folder, hf


def reference_inputs(folder, messages):
    """transformers' tokenizer (apply_chat_template) + PIL image processor, placeholders expanded as
    Qwen3VLProcessor does (its class needs torchvision for the video half)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(str(folder))
    keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    ip = Qwen2VLImageProcessorPil(**{k: QWEN3_VL_PREPROCESSOR[k] for k in keys})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"]
              if p["type"] == "image"]
    out = ip(images=images, return_tensors="pt")
    pieces = text.split("<|image_pad|>")
    expanded = pieces[0]
    for (t, h, w), piece in zip(out["image_grid_thw"].tolist(), pieces[1:], strict=True):
        expanded += "<|image_pad|>" * (t * h * w // 4) + piece
    ids = torch.tensor([tok(expanded, add_special_tokens=False)["input_ids"]])
    return text, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": out["pixel_values"],
                  "image_grid_thw": out["image_grid_thw"], "mm_token_type_ids": (ids == IMG).int()}


def test_multi_turn_two_images_ids_pixels_logits_and_greedy(ckpt):
    folder, hf = ckpt
    pipe = qwenvl.load(folder, dtype="float32")  # parity with transformers' fp32 model, to 1e-4
    assert pipe.family == "qwen3_vl"
    inp = pipe.prepare(MESSAGES)
    text, ref = reference_inputs(folder, MESSAGES)
    assert inp.text == text
    assert inp.input_ids == ref["input_ids"][0].tolist()
    torch.testing.assert_close(inp.image_pixels, ref["pixel_values"], atol=1e-6, rtol=0)
    assert [list(g) for g in inp.image_grid] == ref["image_grid_thw"].tolist()
    with torch.no_grad():
        want = hf(**ref).logits[0]
        got = pipe.logits(MESSAGES)
    assert (got - want).abs().max() <= 1e-4
    with torch.no_grad():
        ref_gen = hf.generate(**ref, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    ref_gen = ref_gen[0, ref["input_ids"].shape[1]:].tolist()
    out = pipe.chat(MESSAGES, max_new_tokens=24, temperature=0.0)
    # our stop set holds <|im_end|> / <|endoftext|>; random weights rarely emit them
    assert len(out.token_ids) > 0 and out.token_ids == ref_gen[:len(out.token_ids)]


def test_batched_engine_equals_each_conversation_alone(ckpt):
    folder, _ = ckpt
    pipe = qwenvl.load(folder, dtype="float32")  # token equality, batched vs alone
    convs = [MESSAGES, [{"role": "user", "content": "Say something."}], MESSAGES[:2]]
    inputs = [pipe.prepare(m) for m in convs]
    params = pipe.sampling(max_new_tokens=12, temperature=0.0)
    alone = [Engine(pipe.model, n_slots=1, max_len=1024).generate(i, params).token_ids for i in inputs]
    batched = [g.token_ids for g in Engine(pipe.model, n_slots=3, max_len=1024).generate_batch(inputs, params)]
    assert batched == alone and all(alone)
