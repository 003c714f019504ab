"""Multiple choice by likelihood on a hand-built model whose log-probabilities are known exactly.

The fake model is a bigram table: the logits at a slot are the log of a fixed next-token distribution of the
token in that slot, so log p(continuation | prompt) is a sum of table entries worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from qwenvl.eval.likelihood import choose, continuation_logprobs, continuation_token_logprobs
from qwenvl.inputs import ModelInputs

Q, A, B, C, DOT = range(5)  # "Question:", " A", " B", " C", "."
_ = 1 / 5
# P(next | current), rows sum to 1 (powers of two where it matters, so the logs are exact by hand).
TABLE = [
    [1 / 16, 1 / 4, 1 / 8, 1 / 2, 1 / 16],  # after Q: A 1/4, B 1/8, C 1/2
    [_, _, _, _, _],  # after A (unused)
    [1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 2],  # after B: "." 1/2
    [_, _, _, _, _],  # after C (unused)
    [1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 2],  # after ".": "." 1/2
]


class BigramModel(torch.nn.Module):
    """The phased API continuation_logprobs calls: embed (one-hot), forward (identity), logits (table)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(5, 5, _weight=torch.eye(5))
        self.log_table = torch.tensor(TABLE).log()
        self.positions: list[torch.Tensor] = []

    def encode_images(self, *args):  # no pixels in these prompts
        raise AssertionError("no vision input expected")

    def embed(self, ids, img, vid):
        assert img is None and vid is None
        return self.model.embed_tokens(ids)

    def forward(self, x, pos):
        self.positions.append(pos)
        return x

    def logits(self, h):
        return h @ self.log_table


OPTIONS = {"A": [A], "B..": [B, DOT, DOT], "C": [C]}


def _prompt(mrope: bool = False, delta: int = 0) -> ModelInputs:
    ids = [DOT, Q]
    pos = torch.arange(2).expand(3, -1) if mrope else torch.arange(2)
    return ModelInputs(input_ids=ids, positions=pos, rope_delta=delta)


def test_token_logprobs_are_the_table_entries() -> None:
    tok = continuation_token_logprobs(BigramModel(), _prompt(), list(OPTIONS.values()))
    # A: log 1/4.  B . .: log 1/8 + log 1/2 + log 1/2.  C: log 1/2.
    assert tok[0] == pytest.approx([math.log(1 / 4)], abs=1e-6)
    assert tok[1] == pytest.approx([math.log(1 / 8), math.log(1 / 2), math.log(1 / 2)], abs=1e-6)
    assert tok[2] == pytest.approx([math.log(1 / 2)], abs=1e-6)
    sums = continuation_logprobs(BigramModel(), _prompt(), list(OPTIONS.values()))
    assert sums == pytest.approx([math.log(1 / 4), math.log(1 / 32), math.log(1 / 2)], abs=1e-6)


def test_the_likelier_option_wins() -> None:
    # A vs C after Q: p = 1/4 vs 1/2, one token each -> C under either rule.
    tok = continuation_token_logprobs(BigramModel(), _prompt(), [OPTIONS["A"], OPTIONS["C"]])
    assert choose(tok) == 1
    assert choose(tok, normalize="mean") == 1
    # the runner's rule, lp.index(max(lp)) over the sums, agrees
    lp = continuation_logprobs(BigramModel(), _prompt(), [OPTIONS["A"], OPTIONS["C"]])
    assert lp.index(max(lp)) == 1


def test_length_normalisation_by_hand() -> None:
    # A: sum log 1/4 = -1.386, mean -1.386.  B . .: sum log 1/32 = -3.466, mean -3.466 / 3 = -1.155.
    # Summed, the one-token A wins; per token (Qwen-VL's eval_mm: lowest mean cross-entropy) B . . wins.
    tok = continuation_token_logprobs(BigramModel(), _prompt(), [OPTIONS["A"], OPTIONS["B.."]])
    assert [sum(t) for t in tok] == pytest.approx([-1.3863, -3.4657], abs=1e-4)
    assert [sum(t) / len(t) for t in tok] == pytest.approx([-1.3863, -1.1552], abs=1e-4)
    assert choose(tok, normalize="sum") == 0
    assert choose(tok, normalize="mean") == 1


def test_choose_ties_and_errors() -> None:
    assert choose([[-1.0], [-0.5, -0.5]]) == 0  # equal sums: the first
    assert choose([[-1.0, -1.0], [-1.0]], normalize="mean") == 0  # equal means: the first
    with pytest.raises(ValueError):
        choose([])
    with pytest.raises(ValueError):
        choose([[-1.0]], normalize="chars")
    with pytest.raises(ValueError):
        choose([[]], normalize="mean")


@pytest.mark.parametrize("mrope", [False, True])
def test_candidate_positions_continue_the_prompt(mrope: bool) -> None:
    # prompt of 2 tokens, rope_delta -1: the 3 candidate tokens sit at positions 2-1, 3-1, 4-1 on every axis.
    model = BigramModel()
    continuation_logprobs(model, _prompt(mrope, delta=-1), [OPTIONS["B.."]])
    (pos,) = model.positions
    want = torch.tensor([0, 1, 1, 2, 3])
    if mrope:
        assert pos.shape == (3, 1, 5) and (pos[:, 0] == want).all()
    else:
        assert pos.shape == (1, 5) and (pos[0] == want).all()
