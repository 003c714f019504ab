"""The engine on tiny random real models: a request's tokens are the same batched as alone.

Qwen2.5-VL (M-RoPE deltas, images, video, multi-turn) and Qwen-VL v1 (1-D RoPE, dynamic NTK and log-n
past seq_length, which each request must get from its OWN prompt length): ~8 mixed requests run
together (staggered lengths, so slots free and refill mid-run), greedy with and without a repetition
penalty, seeded sampling with a seed per request, and requests submitted while others are mid-decode.
"Alone" is a one-slot engine per request. Qwen3-VL's batched check lives in test_pipeline_parity_qwen3.
Loaded in fp32 (not load's "auto"): token equality is the point, and bf16 rounding could break it.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import qwenvl
from qwenvl.engine.engine import Engine
from qwenvl.engine.sampling import SamplingParams
from tests.families.test_qwen_vl_keys import official_state, write_checkpoint
from tests.fixtures.qwen2_tokenizer import qwen_tiktoken_path
from tests.test_pipeline_v1 import CFG as V1_CFG

V1_SEQ_LENGTH = 64


def image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def user(*parts) -> dict:
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


def img(w, h, seed) -> dict:
    return {"type": "image", "image": image(w, h, seed)}


LONG = "please describe every single detail of the scene, the colours, the shapes and where they are " * 2


def conversations(video: bool) -> list[list[dict]]:
    convs = [
        [user("hi")],
        [user(LONG)],
        [user(img(120, 60, 1), "what is this?")],
        [user(img(40, 90, 2), img(70, 70, 3), "compare them")],
        [user(img(90, 60, 4), "first?"), {"role": "assistant", "content": "a square"}, user("and the colour?")],
        [{"role": "system", "content": "You are terse."}, user("count to five")],
        [user(img(56, 56, 5), LONG)],
    ]
    if video:
        frames = [Image.fromarray(np.full((56, 84, 3), 30 * i, np.uint8)) for i in range(4)]
        convs.append([user({"type": "video", "video": frames}, "what moves?")])
    else:
        convs.append([user("short")])
    return convs


@pytest.fixture(scope="module")
def v1_pipe(tmp_path_factory):
    """Qwen-VL v1, tiny: 16 resampler queries, seq_length 64 so long prompts take the NTK / log-n path."""
    cfg = copy.deepcopy(V1_CFG)
    cfg["seq_length"] = V1_SEQ_LENGTH
    cfg["visual"]["n_queries"] = 16
    folder = write_checkpoint(tmp_path_factory.mktemp("v1eng"), cfg, official_state(cfg, seed=4), "safetensors")
    shutil.copyfile(qwen_tiktoken_path(), folder / "qwen.tiktoken")
    (folder / "generation_config.json").write_text(json.dumps({"chat_format": "chatml", "eos_token_id": 151643}))
    return qwenvl.load(folder, dtype="float32")


@pytest.fixture(scope="module")
def q25_pipe(tiny_ckpt):
    return qwenvl.load(tiny_ckpt("qwen2_5_vl")[0], dtype="float32")


@pytest.fixture(params=["qwen_vl", "qwen2_5_vl"])
def case(request, v1_pipe, q25_pipe):
    pipe = v1_pipe if request.param == "qwen_vl" else q25_pipe
    inputs = [pipe.prepare(c) for c in conversations(video=request.param == "qwen2_5_vl")]
    return pipe, inputs


def staggered(pipe, **kw) -> list[SamplingParams]:
    return [pipe.sampling(max_new_tokens=6 + 2 * (i % 4), **kw) for i in range(8)]


def alone(pipe, inputs, params):
    return [Engine(pipe.model, n_slots=1, max_len=512).generate(i, p).token_ids
            for i, p in zip(inputs, params, strict=True)]


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": 0.0, "repetition_penalty": 1.05},
                                {"temperature": 0.8, "top_p": 0.9}])
def test_batched_equals_alone(case, kw):
    pipe, inputs = case
    params = staggered(pipe, **kw)
    if kw["temperature"]:
        params = [SamplingParams(**{**p.__dict__, "seed": 100 + i}) for i, p in enumerate(params)]
    want = alone(pipe, inputs, params)
    assert sum(map(len, want)) > 20
    got = Engine(pipe.model, n_slots=5, max_len=512).generate_batch(inputs, params)
    assert [g.token_ids for g in got] == want


def test_submitted_mid_decode_equals_alone(case):
    pipe, inputs = case
    params = staggered(pipe, temperature=0.0)
    want = alone(pipe, inputs, params)
    eng = Engine(pipe.model, n_slots=8, max_len=512)
    handles = [eng.submit(i, p) for i, p in zip(inputs[:3], params[:3], strict=True)]
    for _ in range(3):
        eng.step()
    for i, p in zip(inputs[3:], params[3:], strict=True):  # one new request per step, others mid-decode
        handles.append(eng.submit(i, p))
        eng.step()
    assert [h.result().token_ids for h in handles] == want


def test_v1_long_prompt_beside_short_one_gets_its_own_ntk(v1_pipe):
    long_inp = v1_pipe.prepare([user(LONG * 4)])
    short_inp = v1_pipe.prepare([user("hi")])
    assert len(long_inp.input_ids) > 2 * V1_SEQ_LENGTH > V1_SEQ_LENGTH > len(short_inp.input_ids)
    params = [v1_pipe.sampling(max_new_tokens=10, temperature=0.0)] * 2
    want = alone(v1_pipe, [long_inp, short_inp], params)
    for order in ([long_inp, short_inp], [short_inp, long_inp]):
        got = Engine(v1_pipe.model, n_slots=2, max_len=512).generate_batch(order, params)
        assert [g.token_ids for g in got] == (want if order[0] is long_inp else want[::-1])


def test_compiled_decode_steps_equal_eager_alone(case):
    """Engine(compile=True): decode steps through torch.compile (dynamic batch / cache length, the per-row
    starts and masks, v1's per-row NTK) give the tokens of the eager one-slot runs. Greedy, fp32."""
    pipe, inputs = case
    params = staggered(pipe, temperature=0.0)
    want = alone(pipe, inputs, params)
    eng = Engine(pipe.model, n_slots=5, max_len=512, compile=True)
    assert [g.token_ids for g in eng.generate_batch(inputs, params)] == want
    assert [eng.generate(inputs[0], params[0]).token_ids] == want[:1]  # one row: the int-start graph
