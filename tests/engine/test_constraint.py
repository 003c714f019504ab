"""Per-request token constraints in the engine (engine/constraint.py) against the fake model: the mask
applies before sampling, advance sees each sampled token, a complete constraint ends the request with
"stop", a failing constraint fails only its request, and batching does not change anyone's tokens."""

from __future__ import annotations

import math

import pytest
import torch

from qwenvl.engine.constraint import ConstraintError, TokenConstraint, constrain
from qwenvl.engine.engine import Engine
from qwenvl.engine.sampling import SamplingParams
from tests.engine.fake import STOP, VOCAB, FakeModel, decode, expected, inputs, next_token


def engine(**kw) -> Engine:
    kw.setdefault("n_slots", 4)
    kw.setdefault("max_len", 256)
    return Engine(FakeModel(), decode=decode, **kw)


class AllowSet:
    """Allows a fixed set of ids; records what it was given."""

    def __init__(self, allowed: set[int]) -> None:
        self.allowed, self.seen, self.sizes = allowed, [], []

    def mask(self, vocab_size: int) -> torch.Tensor:
        self.sizes.append(vocab_size)
        m = torch.zeros(vocab_size, dtype=torch.bool)
        m[sorted(self.allowed)] = True
        return m

    def advance(self, token: int) -> None:
        self.seen.append(token)


class Script:
    """Forces a token sequence, then (complete) allows only the stop id."""

    def __init__(self, tokens: list[int], stop: int = STOP) -> None:
        self.tokens, self.stop, self.seen = tokens, stop, []

    def mask(self, vocab_size: int) -> torch.Tensor:
        m = torch.zeros(vocab_size, dtype=torch.bool)
        m[self.tokens[len(self.seen)] if len(self.seen) < len(self.tokens) else self.stop] = True
        return m

    def advance(self, token: int) -> None:
        self.seen.append(token)


class Raises(AllowSet):
    """Fails in mask (or advance) at its n-th call."""

    def __init__(self, n: int, where: str = "mask") -> None:
        super().__init__(set(range(32, 127)))
        self.n, self.where, self.calls = n, where, 0

    def _tick(self, where: str) -> None:
        if where == self.where:
            self.calls += 1
            if self.calls == self.n:
                raise RuntimeError("grammar exploded")

    def mask(self, vocab_size: int) -> torch.Tensor:
        self._tick("mask")
        return super().mask(vocab_size)

    def advance(self, token: int) -> None:
        self._tick("advance")
        super().advance(token)


def constrained_greedy(inp, allowed: set[int], n: int) -> list[int]:
    """The fake's greedy continuation when only `allowed` may be chosen: the allowed id nearest the
    fake's target (ties: the lower id, as argmax takes the first maximum)."""
    vals = [float(i) for i in inp.input_ids]
    out = []
    for _ in range(n):
        target = next_token(sum(vals), len(vals) - 1 + inp.rope_delta)
        tok = min(sorted(allowed), key=lambda v: abs(v - target))
        out.append(tok)
        vals.append(float(tok))
    return out


DIGITS = set(range(ord("0"), ord("9") + 1))


def test_mask_restricts_greedy_and_advance_sees_each_token():
    inp = inputs("numbers please")
    c = AllowSet(DIGITS)
    gen = engine().generate(inp, SamplingParams(max_new_tokens=12), constraint=c)
    assert gen.token_ids == constrained_greedy(inp, DIGITS, 12)
    assert gen.token_ids != expected(inp, 12)  # the constraint changed the output
    assert set(gen.token_ids) <= DIGITS and gen.text.isdigit()
    assert c.seen == gen.token_ids and c.sizes == [VOCAB] * 12  # the mask covers the logits' V


def test_sampled_tokens_and_logprobs_stay_inside_the_mask():
    params = SamplingParams(max_new_tokens=20, temperature=1.5, seed=3, logprobs=True, top_logprobs=5)
    c = AllowSet(DIGITS)
    gen = engine().generate(inputs("x"), params, constraint=c)
    assert set(gen.token_ids) <= DIGITS and c.seen == gen.token_ids
    for lp in gen.logprobs:  # the constrained distribution: only allowed ids have mass
        assert {t for t, _ in lp.top} <= DIGITS
        assert math.isfinite(lp.logprob)


def test_complete_constraint_ends_with_stop():
    forced = [ord(ch) for ch in '{"a": 1}']
    c = Script(forced)
    gen = engine().generate(inputs("json"), SamplingParams(max_new_tokens=50, stop_token_ids=(STOP,)), constraint=c)
    assert gen.token_ids == forced and gen.text == '{"a": 1}'
    assert gen.finish_reason == "stop" and gen.stop_reason == STOP
    assert c.seen == [*forced, STOP]  # advance also sees the stop token


@pytest.mark.parametrize("where", ["mask", "advance"])
def test_raising_constraint_fails_alone(where):
    prompts = [inputs("first"), inputs("second one"), inputs("third")]
    eng = engine()
    hs = [eng.submit(prompts[0], SamplingParams(max_new_tokens=8)),
          eng.submit(prompts[1], SamplingParams(max_new_tokens=8), constraint=Raises(3, where)),
          eng.submit(prompts[2], SamplingParams(max_new_tokens=8), constraint=AllowSet(DIGITS))]
    while eng.busy:
        eng.step()
    bad = hs[1].request.out
    assert bad.finish_reason == "error" and len(bad.token_ids) == 2
    assert f"Raises.{where}" in bad.error and "grammar exploded" in bad.error
    with pytest.raises(ConstraintError, match="grammar exploded"):
        hs[1].result()
    assert hs[0].result().token_ids == expected(prompts[0], 8)
    assert hs[2].result().token_ids == constrained_greedy(prompts[2], DIGITS, 8)
    assert sorted(eng.pool.free) == [0, 1, 2, 3]


class Bad:
    def __init__(self, result) -> None:
        self.result = result

    def mask(self, vocab_size: int):
        return self.result(vocab_size)

    def advance(self, token: int) -> None:
        pass


@pytest.mark.parametrize(("result", "message"), [
    (lambda v: torch.zeros(v, dtype=torch.bool), "allows no token"),
    (lambda v: torch.ones(v - 1, dtype=torch.bool), "shape"),
    (lambda v: torch.ones(v), "bool tensor"),
    (lambda v: [True] * v, "bool tensor"),
])
def test_bad_masks_fail_the_request_with_a_clear_message(result, message):
    gen_ok = engine().generate(inputs("ok"), SamplingParams(max_new_tokens=3), constraint=Bad(lambda v: None))
    assert gen_ok.token_ids == expected(inputs("ok"), 3)  # None = no restriction
    h = engine().submit(inputs("bad"), SamplingParams(max_new_tokens=3), constraint=Bad(result))
    with pytest.raises(ConstraintError, match=message):
        h.result()
    assert h.request.out.finish_reason == "error"


def test_batched_with_and_without_constraints_equals_alone():
    prompts = [inputs("hi"), inputs("a longer prompt, with words"), inputs("img", images=[[3.0, 5.0, 7.0]]),
               inputs("d", delta=-2)]
    params = [SamplingParams(max_new_tokens=10), SamplingParams(max_new_tokens=10, temperature=1.0, seed=5),
              SamplingParams(max_new_tokens=10, temperature=0.7, seed=9, stop_token_ids=(STOP,)),
              SamplingParams(max_new_tokens=10)]
    makers = [lambda: None, lambda: AllowSet(DIGITS), lambda: Script([ord("a"), ord("b")]),
              lambda: AllowSet({ord("x"), ord("y"), ord("z")})]
    alone = [engine(n_slots=1).generate(p, s, constraint=m()) for p, s, m in zip(prompts, params, makers, strict=True)]
    batched = engine().generate_batch(prompts, params, constraints=[m() for m in makers])
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.finish_reason for g in batched] == ["length", "length", "stop", "length"]
    assert batched[2].token_ids == [ord("a"), ord("b")]


def test_constrain_helper_and_protocol():
    assert isinstance(AllowSet(DIGITS), TokenConstraint)
    logits = torch.arange(6, dtype=torch.float32)[None]
    m = torch.tensor([True, False, True, False, False, False])

    class Fixed(Bad):
        pass

    out = constrain(logits, Fixed(lambda v: m))
    assert out[0, 0] == 0 and out[0, 2] == 2 and torch.isinf(out[0, [1, 3, 4, 5]]).all()
    assert torch.equal(logits, torch.arange(6, dtype=torch.float32)[None])  # not in place
