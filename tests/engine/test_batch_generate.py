"""Batched generation equals one-at-a-time generation, whatever the batch composition (pain point 3)."""

from __future__ import annotations

import numpy as np
from PIL import Image

import qwenvl
from qwenvl.engine.batch_generate import generate_batch
from qwenvl.engine.generate import generate
from qwenvl.engine.sampling import SamplingParams


def test_batch_equals_single(tiny_ckpt):
    folder, _ = tiny_ckpt("qwen2_5_vl")
    pipe = qwenvl.load(folder)
    rng = np.random.default_rng(0)
    img = lambda w, h: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    convs = [
        [{"role": "user", "content": [{"type": "image", "image": img(120, 60)}, {"type": "text", "text": "a?"}]}],
        [{"role": "user", "content": "a much longer text only question about nothing in particular"}],
        [{"role": "user", "content": [{"type": "image", "image": img(40, 90)}, {"type": "image", "image": img(70, 70)},
                                      {"type": "text", "text": "compare"}]}],
    ]
    inputs = [pipe.prepare(c) for c in convs]
    params = SamplingParams(max_new_tokens=12)
    single = [generate(pipe.model, i, params).token_ids for i in inputs]
    assert [g.token_ids for g in generate_batch(pipe.model, inputs, params)] == single
    assert [g.token_ids for g in generate_batch(pipe.model, inputs[::-1], params)] == single[::-1]
    stop = SamplingParams(max_new_tokens=12, stop_token_ids=(single[0][2],))
    got = generate_batch(pipe.model, inputs, stop)
    assert got[0].token_ids == single[0][:2] and got[0].finish_reason == "stop"
