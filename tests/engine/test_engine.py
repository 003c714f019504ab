"""The engine's scheduling against a fake model and a byte tokenizer (tests/engine/fake.py): admission
between steps, slot reuse, per-row offsets over stale slots, budget refusal, stop strings across
token boundaries, max tokens, cancel, streaming events, per-request sampling state."""

from __future__ import annotations

import pytest
import torch

from qwenvl.engine.engine import Engine
from qwenvl.engine.kv import bytes_per_token
from qwenvl.engine.sampling import SamplingParams
from tests.engine.fake import STOP, FakeModel, decode, expected, inputs

GREEDY = SamplingParams(max_new_tokens=6)


def engine(**kw) -> Engine:
    kw.setdefault("n_slots", 4)
    kw.setdefault("max_len", 256)
    return Engine(FakeModel(), decode=decode, **kw)


PROMPTS = [inputs("hi"), inputs("a longer prompt, with words"), inputs("img", images=[[3.0, 5.0, 7.0]]),
           inputs("two", images=[[1.0], [2.0, 4.0]]), inputs("vid", videos=[[9.0, 8.0]]), inputs("d", delta=-2)]


def test_batched_equals_reference_and_alone():
    want = [expected(p, 6) for p in PROMPTS]
    assert [engine(n_slots=1).generate(p, GREEDY).token_ids for p in PROMPTS] == want
    eng = engine(n_slots=4)
    gens = eng.generate_batch(PROMPTS, GREEDY)
    assert [g.token_ids for g in gens] == want
    assert all(g.finish_reason == "length" and g.text == decode(g.token_ids) for g in gens)
    assert [g.prompt_tokens for g in gens] == [len(p.input_ids) for p in PROMPTS]
    assert sorted(eng.pool.free) == [0, 1, 2, 3] and not eng.busy


def test_admission_between_steps_and_continuous_batching():
    eng = engine(n_slots=2)
    fake = eng.model
    a, b, c = (eng.submit(p, SamplingParams(max_new_tokens=n)) for p, n in zip(PROMPTS[:3], (3, 8, 4), strict=True))
    eng.step()  # a and b prefilled together; c waits for a slot
    assert fake.calls[-1][:3] == ("forward", 2, len(PROMPTS[1].input_ids))
    assert [r.id for r in eng.scheduler.waiting] == [c.id] and eng.pool.free == []
    eng.step()  # one decode step over both rows, each at its own offset
    assert fake.calls[-1] == ("forward", 2, 1, "rows")
    eng.step()  # a reaches 3 tokens and frees its slot; c is admitted in the same step
    assert a.done and a.request.out.token_ids == expected(PROMPTS[0], 3)
    assert c.request.slot == 0 and fake.calls[-1][:3] == ("forward", 1, len(PROMPTS[2].input_ids))
    d = eng.submit(PROMPTS[3], SamplingParams(max_new_tokens=5))  # arrives while b and c are mid-decode
    while eng.busy:
        eng.step()
    for h, p, n in ((b, PROMPTS[1], 8), (c, PROMPTS[2], 4), (d, PROMPTS[3], 5)):
        assert h.result().token_ids == expected(p, n)


def test_reused_slot_with_stale_entries_beside_a_longer_row():
    """A short request takes the slot of a finished long one and decodes next to a long row: the
    keys past its own length (stale, and the other row's span) must be masked."""
    eng = engine(n_slots=2)
    long_a = inputs("x" * 90)
    first = eng.submit(inputs("y" * 80), SamplingParams(max_new_tokens=2))
    running = eng.submit(long_a, SamplingParams(max_new_tokens=12))
    first.result()
    short = eng.submit(inputs("s"), SamplingParams(max_new_tokens=6))
    assert short.result().token_ids == expected(inputs("s"), 6)
    assert running.result().token_ids == expected(long_a, 12)


def test_refusals_name_the_limits():
    eng = engine(n_slots=2, max_len=32)
    with pytest.raises(ValueError, match=r"30 prompt \+ 5 new tokens = 35 KV slots.*max_len is 32"):
        eng.submit(inputs("z" * 30), SamplingParams(max_new_tokens=5))
    eng.submit(inputs("z" * 30), SamplingParams(max_new_tokens=2))  # exactly fits
    with pytest.raises(ValueError, match="holds 0 slot"):
        Engine(FakeModel(), max_len=1000, memory_bytes=100)
    with pytest.raises(ValueError, match="empty prompt"):
        eng.submit(inputs(""), GREEDY)
    with pytest.raises(ValueError, match="decode="):
        Engine(FakeModel(), n_slots=1, max_len=64).submit(inputs("a"), SamplingParams(max_new_tokens=4, stop=("x",)))


def test_budget_sizes_the_pool():
    per_token = bytes_per_token(FakeModel().cfg.text, torch.float64)
    assert per_token == 2 * 1 * 1 * 2 * 8
    eng = Engine(FakeModel(), max_len=100, memory_bytes=per_token * 100 * 3 + 5)
    assert (eng.pool.n_slots, eng.pool.max_len) == (3, 100)
    assert tuple(eng.pool.cache.k.shape) == (1, 3, 1, 100, 2)


def test_stop_string_spanning_tokens_and_stream_deltas():
    p = inputs("stop test")
    full = decode(expected(p, 20))
    stop = full[7:10]  # three tokens: completed by the 10th
    assert stop not in full[:9]
    eng = engine()
    events = list(eng.stream(p, SamplingParams(max_new_tokens=20, stop=(stop, "never"))))
    gen = eng.generate(p, SamplingParams(max_new_tokens=20, stop=(stop,)))
    assert gen.text == full[:full.index(stop)] and gen.finish_reason == "stop" and gen.stop_reason == stop
    assert gen.token_ids == expected(p, 10)
    assert "".join(e.text for e in events) == gen.text
    assert events[-1].finished and sum(len(e.token_ids) for e in events) == 10


def test_stop_token_and_max_tokens():
    p = inputs("q")
    want = expected(p, 8)
    gen = engine().generate(p, SamplingParams(max_new_tokens=8, stop_token_ids=(want[3],)))
    assert gen.token_ids == want[:3] and gen.finish_reason == "stop" and gen.stop_reason == want[3]
    gen = engine().generate(p, SamplingParams(max_new_tokens=5, stop_token_ids=(STOP,)))
    assert gen.token_ids == want[:5] and gen.finish_reason == "length"
    zero = engine().submit(p, SamplingParams(max_new_tokens=0))
    assert zero.done and zero.result().token_ids == [] and zero.result().finish_reason == "length"


def test_cancel_frees_the_slot_at_once():
    eng = engine(n_slots=1)
    a = eng.submit(inputs("first"), SamplingParams(max_new_tokens=50))
    b = eng.submit(inputs("second"), SamplingParams(max_new_tokens=4))
    eng.step()
    eng.step()
    assert eng.pool.free == [] and b.request in eng.scheduler.waiting
    assert eng.cancel(a.id) and eng.pool.free == [0] and not eng.cancel(a.id)
    out = a.result()
    assert out.finish_reason == "cancelled" and out.token_ids == expected(inputs("first"), 2)
    assert list(a)[-1].finish_reason == "cancelled"
    assert b.result().token_ids == expected(inputs("second"), 4)
    waiting = eng.submit(inputs("w"), GREEDY)
    assert waiting.cancel() and waiting.result().finish_reason == "cancelled"


def test_closing_a_stream_cancels_it():
    eng = engine(n_slots=1)
    it = eng.stream(inputs("abc"), SamplingParams(max_new_tokens=30))
    first = next(it)
    assert len(first.token_ids) == 1 and eng.pool.free == []
    it.close()
    assert eng.pool.free == [0] and not eng.busy


def test_seeded_sampling_and_penalties_are_per_request():
    params = [SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.95, seed=s, repetition_penalty=1.3,
                             presence_penalty=0.5, frequency_penalty=0.4) for s in range(len(PROMPTS))]
    alone = [engine(n_slots=1).generate(p, q).token_ids for p, q in zip(PROMPTS, params, strict=True)]
    batched = [g.token_ids for g in engine(n_slots=3).generate_batch(PROMPTS, params)]
    assert batched == alone
    assert alone != [expected(p, 12) for p in PROMPTS]  # the sampling did something


def test_logprobs_of_the_processed_distribution():
    p = inputs("lp")
    gen = engine().generate(p, SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=3))
    assert len(gen.logprobs) == 4
    for tok, lp in zip(gen.token_ids, gen.logprobs, strict=True):
        assert lp.token_id == tok and lp.top[0][0] == tok and lp.top[0][1] == pytest.approx(lp.logprob)
        assert len(lp.top) == 3 and lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    # greedy fake logits: -0.7 |v - target| over the printable range -> log-softmax at the target
    row = -(torch.arange(300) - gen.token_ids[0]).abs().double() * 0.7
    row = row.masked_fill((torch.arange(300) < 32) | (torch.arange(300) > 126), -50.0)
    assert gen.logprobs[0].logprob == pytest.approx(float(row.float().log_softmax(-1)[gen.token_ids[0]]), abs=1e-5)
    assert engine().generate(p, SamplingParams(max_new_tokens=2)).logprobs is None


def test_non_consecutive_slots_index_the_pool(monkeypatch):
    """Slots 0 and 2 decode together once slot 1 is done: the pool is indexed by rows, not sliced."""
    eng = engine(n_slots=3)
    views = []
    real_view = eng.pool.view
    monkeypatch.setattr(eng.pool, "view", lambda slots: views.append(list(slots)) or real_view(slots))
    ps = [inputs("zero" * 5), inputs("one"), inputs("two" * 3)]
    gens = eng.generate_batch(ps, [SamplingParams(max_new_tokens=n) for n in (9, 2, 9)])
    assert [0, 2] in views
    assert [g.token_ids for g in gens] == [expected(p, n) for p, n in zip(ps, (9, 2, 9), strict=True)]


def test_a_failing_request_ends_alone():
    """Placeholders without pixels: that request fails with the model's error, its batch-mates go on."""
    eng = engine(n_slots=4)
    bad = inputs("bad", images=[[1.0, 2.0]])
    bad.image_pixels, bad.image_grid = None, []
    good = [eng.submit(p, SamplingParams(max_new_tokens=4)) for p in PROMPTS[:2]]
    failing = eng.submit(bad, SamplingParams(max_new_tokens=4))
    more = eng.submit(PROMPTS[2], SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="placeholders and features"):
        failing.result()
    assert failing.request.out.finish_reason == "error" and "placeholders" in failing.request.out.error
    for h, p in zip([*good, more], PROMPTS[:3], strict=True):
        assert h.result().token_ids == expected(p, 4)
    assert sorted(eng.pool.free) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="placeholders"):
        list(eng.stream(bad, GREEDY))
