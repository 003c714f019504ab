"""Sampling: greedy, temperature, top-k, top-p, min-p, penalties, seeds, logprobs, generation_config defaults."""

from __future__ import annotations

import pytest
import torch

from qwenvl.engine import sampling
from qwenvl.engine.sampling import RowSampler, SamplingParams, apply_repetition_penalty, select


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
    out = apply_repetition_penalty(logits, torch.tensor([[True, True, False]]), 2.0)
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
                                {"max_new_tokens": -1}, {"repetition_penalty": 0}, {"min_p": 2.0},
                                {"presence_penalty": 3.0}, {"frequency_penalty": -2.5}, {"top_logprobs": 21},
                                {"stop": ("",)}])
def test_invalid_params_named(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplingParams(**kw)


def test_stop_strings_normalised():
    assert SamplingParams(stop="\n").stop == ("\n",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams.from_generation_config({"min_p": 0.1}, stop=["x"]).min_p == 0.1


def test_min_p_keeps_tokens_near_the_best():
    # probs 0.5, 0.3, 0.15, 0.05: min_p 0.5 keeps p >= 0.25 -> {0, 1}
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(2000, 4)
    got = select(logits.clone(), SamplingParams(temperature=1.0, min_p=0.5), torch.Generator().manual_seed(1))
    assert set(got.tolist()) == {0, 1}


def test_top_p_candidates_shortcut_equals_full_sort(monkeypatch):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 5000, generator=g) * torch.tensor([[8.0], [1.0], [0.05]])  # peaked .. flat
    fast = sampling._top_p(logits, 0.8)
    monkeypatch.setattr(sampling, "TOP_P_CANDIDATES", 10**9)
    assert torch.equal(fast, sampling._top_p(logits, 0.8))


def test_penalties_see_only_the_request_tokens():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0, 0.5]])
    s = RowSampler(SamplingParams(repetition_penalty=2.0, presence_penalty=0.25, frequency_penalty=0.5), [0, 1])
    torch.testing.assert_close(s.process(logits), torch.tensor([[1.0, -4.0, 1.0, 1.0, 0.5]]))  # prompt: rep only
    s.observe(3)
    s.observe(3)  # generated twice: repetition /2, frequency 2 * 0.5, presence 0.25
    torch.testing.assert_close(s.process(logits), torch.tensor([[1.0, -4.0, 1.0, 0.5 - 1.0 - 0.25, 0.5]]))


def test_row_sampler_seed_is_private():
    logits = torch.randn(1, 1000)
    p = SamplingParams(temperature=1.0, seed=9)
    a, b = RowSampler(p, []), RowSampler(p, [])
    torch.rand(100)  # the global RNG moving does not matter
    seq_a = [a(logits)[0] for _ in range(20)]
    seq_b = [b(logits)[0] for _ in range(20)]
    assert seq_a == seq_b and len(set(seq_a)) > 5


def test_draw_follows_the_probabilities():
    probs = torch.tensor([[0.6, 0.0, 0.3, 0.1]]).expand(30000, 4)
    got = sampling.draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(got, minlength=4).float() / len(got)
    assert freq[1] == 0 and (freq - probs[0]).abs().max() < 0.01


def test_logprobs_are_of_the_processed_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    p = SamplingParams(temperature=0.5, top_k=2, seed=0, logprobs=True, top_logprobs=3)
    tok, lp = RowSampler(p, [])(logits)
    want = (logits / 0.5).masked_fill(torch.tensor([[False, False, True, True]]), float("-inf")).log_softmax(-1)[0]
    assert lp.token_id == tok and lp.logprob == pytest.approx(float(want[tok]))
    assert [t for t, _ in lp.top[:2]] == [0, 1] and lp.top[2][1] == float("-inf")
