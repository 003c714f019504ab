"""Sampling: greedy, temperature, top-k, top-p, repetition penalty, seeds, generation_config defaults."""

from __future__ import annotations

import pytest
import torch

from qwenvl.engine.sampling import SamplingParams, apply_repetition_penalty, select


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    assert select(logits, SamplingParams(), None).tolist() == [1, 0]


def test_top_k_one_is_greedy_even_with_temperature():
    logits = torch.randn(4, 50)
    got = select(logits, SamplingParams(temperature=1.5, top_k=1), torch.Generator().manual_seed(0))
    assert torch.equal(got, logits.argmax(-1))


def test_top_k_never_leaves_the_k_best():
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1)).expand(500, 100)
    best3 = set(logits[0].topk(3).indices.tolist())
    got = select(logits.clone(), SamplingParams(temperature=5.0, top_k=3), torch.Generator().manual_seed(2))
    assert set(got.tolist()) <= best3 and len(set(got.tolist())) == 3


def test_top_p_keeps_smallest_prefix_reaching_p():
    # probs 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps {0, 1}; top_p 0.85 keeps {0, 1, 2}
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(2000, 4)
    g = torch.Generator().manual_seed(3)
    assert set(select(logits.clone(), SamplingParams(temperature=1.0, top_p=0.7), g).tolist()) == {0, 1}
    assert set(select(logits.clone(), SamplingParams(temperature=1.0, top_p=0.85), g).tolist()) == {0, 1, 2}


def test_sampling_frequencies_follow_temperature():
    logits = torch.tensor([[1.0, 0.0]]).expand(20000, 2)
    g = torch.Generator().manual_seed(4)
    frac = select(logits.clone(), SamplingParams(temperature=1.0), g).float().mean().item()
    assert abs(frac - 1 / (1 + torch.e)) < 0.02  # p(token 1) = e^0 / (e^1 + e^0)


def test_seed_reproducible():
    logits = torch.randn(8, 1000)
    p = SamplingParams(temperature=1.0)
    a = select(logits, p, torch.Generator().manual_seed(7))
    b = select(logits, p, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_generation_config_defaults_and_overrides():
    gen = {"do_sample": True, "temperature": 0.01, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05,
           "eos_token_id": [151645, 151643], "max_new_tokens": 512}
    p = SamplingParams.from_generation_config(gen)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens) == (0.01, 0.001, 1, 1.05, 512)
    assert p.stop_token_ids == (151645, 151643) and p.greedy
    q = SamplingParams.from_generation_config(gen, temperature=0.7, top_k=None, max_new_tokens=8)
    assert (q.temperature, q.top_k, q.max_new_tokens) == (0.7, 1, 8)
    assert SamplingParams.from_generation_config({"do_sample": False, "temperature": 0.9}).temperature == 0.0


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2},
                                {"max_new_tokens": -1}, {"repetition_penalty": 0}])
def test_invalid_params_named(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplingParams(**kw)
