"""The engine's two caches on tiny random real models: vision features by content hash, prefix reuse.

A second chat turn on the same image encodes no image and prefills only its new tokens; one changed
pixel or another image with the same text never reuses features or image KV; a cancelled or evicted
cached slot leaves nothing behind. Every output is compared with a cold engine (both caches off).
Families: Qwen2.5-VL (M-RoPE), Qwen3-VL (DeepStack) and v1 (1-D RoPE, <img> spans). Loaded in fp32
(not load's "auto"): cached and cold runs must give identical tokens, which bf16 rounding could break.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.engine.engine import Engine
from qwenvl.engine.vision_cache import VisionCache
from tests.families.test_qwen_vl_keys import official_state, write_checkpoint
from tests.fixtures.hf_tiny_qwen3 import make_hf_checkpoint as make_qwen3_checkpoint
from tests.fixtures.qwen2_tokenizer import qwen_tiktoken_path
from tests.fixtures.qwen3_tokenizer import write_qwen3_vl_folder
from tests.test_pipeline_v1 import CFG as V1_CFG


def picture(seed: int, w: int = 56, h: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def user(*parts) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": Image.fromarray(p)} if isinstance(p, np.ndarray)
                                        else {"type": "text", "text": p} for p in parts]}


@pytest.fixture(scope="module")
def q25(tiny_ckpt):
    return qwenvl.load(tiny_ckpt("qwen2_5_vl")[0], dtype="float32")


@pytest.fixture(scope="module")
def q3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("q3cache")
    make_qwen3_checkpoint(folder, moe=False, seed=5)
    write_qwen3_vl_folder(folder)
    return qwenvl.load(folder, dtype="float32")


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    cfg = copy.deepcopy(V1_CFG)
    cfg["visual"]["n_queries"] = 16
    folder = write_checkpoint(tmp_path_factory.mktemp("v1cache"), cfg, official_state(cfg, seed=4), "safetensors")
    shutil.copyfile(qwen_tiktoken_path(), folder / "qwen.tiktoken")
    (folder / "generation_config.json").write_text(json.dumps({"chat_format": "chatml", "eos_token_id": 151643}))
    return qwenvl.load(folder, dtype="float32")


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl", "qwen_vl"])
def pipe(request):
    return request.getfixturevalue({"qwen2_5_vl": "q25", "qwen3_vl": "q3", "qwen_vl": "v1"}[request.param])


def params(pipe, n: int = 8):
    return pipe.sampling(max_new_tokens=n, temperature=0.0)


def cold(pipe, inp, n: int = 8) -> list[int]:
    return Engine(pipe.model, n_slots=1, max_len=512, vision_cache_bytes=0,
                  prefix_cache=False).generate(inp, params(pipe, n)).token_ids


def second_turn(pipe, first: list[dict], reply: list[int], text: str):
    said = pipe.processor.decode(reply)
    return pipe.prepare(first + [{"role": "assistant", "content": said}, user(text)])


def first_vision_slot(pipe, inp) -> int:
    img, vid = pipe.model.placeholder_masks(torch.tensor([inp.input_ids]))
    return int((img | vid)[0].nonzero()[0, 0])


@pytest.fixture
def encodes(monkeypatch):
    """Count the model's vision encodes (patch rows or images passed in), per model."""
    seen: list[int] = []

    def watch(model):
        real = model.encode_images

        def counted(pixels, grid=None):
            seen.append(pixels.shape[0])
            return real(pixels, grid)
        monkeypatch.setattr(model, "encode_images", counted)
        return seen
    return watch


def test_second_turn_reuses_image_and_prefix(pipe, encodes):
    conv = [user(picture(1), "what is this?")]
    first = pipe.prepare(conv)
    eng = Engine(pipe.model, n_slots=2, max_len=512)
    seen = encodes(pipe.model)
    g1 = eng.generate(first, params(pipe))
    assert len(seen) == 1 and eng.stats["prefill_tokens"] == len(first.input_ids)
    second = second_turn(pipe, conv, g1.token_ids, "and the colour?")
    before = eng.stats
    g2 = eng.generate(second, params(pipe))
    st = eng.stats
    assert len(seen) == 1 and st["vision_items_encoded"] == before["vision_items_encoded"]  # no ViT on turn 2
    reused = st["prefix_reused_tokens"] - before["prefix_reused_tokens"]
    assert st["prefix_hits"] == 1 and reused >= len(first.input_ids)
    assert st["prefill_tokens"] - before["prefill_tokens"] == len(second.input_ids) - reused
    assert st["prefix_position_mismatches"] == 0
    assert g2.token_ids == cold(pipe, second)


def test_vision_cache_hit_without_prefix_reuse(q25, encodes):
    """Prefix cache off: the same picture in a new prompt is a vision-cache hit, the ViT is not run."""
    a = q25.prepare([user(picture(1), "what is this?")])
    b = q25.prepare([user("look:", picture(1), "and this?")])
    eng = Engine(q25.model, n_slots=2, max_len=512, prefix_cache=False)
    seen = encodes(q25.model)
    eng.generate(a, params(q25))
    gb = eng.generate(b, params(q25))
    assert len(seen) == 1
    assert eng.stats["vision_hits"] == 1 and eng.stats["vision_misses"] == 1
    assert gb.token_ids == cold(q25, b)


def test_one_pixel_apart_never_shares(q25):
    pa = picture(7)
    pb = pa.copy()
    pb[3, 5, 0] ^= 0x80
    a, b = (q25.prepare([user(p, "what is this?")]) for p in (pa, pb))
    assert a.input_ids == b.input_ids and not torch.equal(a.image_pixels, b.image_pixels)
    eng = Engine(q25.model, n_slots=2, max_len=512)
    ga = eng.generate(a, params(q25))
    gb = eng.generate(b, params(q25))
    assert eng.stats["vision_hits"] == 0 and eng.stats["vision_misses"] == 2
    assert eng.stats["prefix_reused_tokens"] <= first_vision_slot(q25, b)  # at most the text before it
    assert ga.token_ids == cold(q25, a) and gb.token_ids == cold(q25, b)


def test_same_text_other_image_never_reuses(pipe):
    convs = [[user(picture(s), "what is this?")] for s in (11, 12)]
    a, b = (pipe.prepare(c) for c in convs)
    assert a.input_ids == b.input_ids  # identical ids: only the images tell them apart
    eng = Engine(pipe.model, n_slots=2, max_len=512)
    ga = eng.generate(a, params(pipe))
    gb = eng.generate(b, params(pipe))
    assert eng.stats["prefix_reused_tokens"] <= first_vision_slot(pipe, b)
    assert gb.token_ids == cold(pipe, b)
    # a's slot is still cached beside b's: a's next turn goes to a's, not b's
    second = second_turn(pipe, convs[0], ga.token_ids, "and the colour?")
    before = eng.stats["prefix_reused_tokens"]
    g2 = eng.generate(second, params(pipe))
    assert eng.stats["prefix_reused_tokens"] - before >= len(a.input_ids)
    assert g2.token_ids == cold(pipe, second)


def test_lru_evicts_by_bytes():
    cache = VisionCache(3000)
    feats = {k: torch.zeros(250, dtype=torch.float32) for k in (b"a", b"b", b"c", b"d")}  # 1000 bytes each
    for k in (b"a", b"b", b"c"):
        cache.put(k, feats[k])
    assert cache.nbytes == 3000 and len(cache) == 3
    assert cache.get(b"a") is not None  # a is now the most recent: b is the oldest
    cache.put(b"d", feats[b"d"])
    assert set(cache.entries) == {b"a", b"c", b"d"} and cache.nbytes == 3000 and cache.evictions == 1
    cache.put(b"big", torch.zeros(1000, dtype=torch.float32))  # over the whole budget: not stored
    assert b"big" not in cache.entries and cache.nbytes == 3000
    cache.put(b"e", torch.zeros(500, dtype=torch.float32))  # 2000 bytes: two go
    assert set(cache.entries) == {b"d", b"e"} and cache.nbytes == 3000
    with pytest.raises(ValueError):
        VisionCache(-1)


def test_engine_vision_budget_evicts(q25):
    a, b = (q25.prepare([user(picture(s), "what is this?")]) for s in (21, 22))
    eng = Engine(q25.model, n_slots=1, max_len=512, prefix_cache=False)
    eng.generate(a, params(q25, 2))
    one = eng.stats["vision_cache_bytes"]
    assert one > 0
    eng = Engine(q25.model, n_slots=1, max_len=512, prefix_cache=False, vision_cache_bytes=one)
    for inp in (a, b, a):
        eng.generate(inp, params(q25, 2))
    assert eng.stats["vision_hits"] == 0 and eng.stats["vision_misses"] == 3 and eng.stats["vision_evictions"] == 2


def test_cancel_and_eviction_leave_no_stale_state(q25):
    conv = [user(picture(31), "what is this?")]
    a = q25.prepare(conv)
    eng = Engine(q25.model, n_slots=1, max_len=512)
    ga = eng.generate(a, params(q25))
    # an unrelated request takes a's cached slot (sharing at most the system prompt), then is cancelled
    other_conv = [user("count to five, slowly")]
    other = q25.prepare(other_conv)
    h = eng.submit(other, params(q25, 16))
    for _ in range(3):
        eng.step()
    assert h.cancel() and not eng.prefix.entries  # the slot is free and vouches for nothing
    # a's next turn finds nothing to reuse (evicted), nor does a prompt extending the cancelled one
    second = second_turn(q25, conv, ga.token_ids, "and the colour?")
    ext = q25.prepare(other_conv + [{"role": "assistant", "content": "one"}, user("go on")])
    hits, reused = eng.stats["prefix_hits"], eng.stats["prefix_reused_tokens"]
    g2 = eng.generate(second, params(q25))
    assert eng.stats["prefix_hits"] == hits and eng.stats["prefix_reused_tokens"] == reused
    assert g2.token_ids == cold(q25, second)
    gx = eng.generate(ext, params(q25))  # may reuse second's system prompt, never the cancelled turn
    assert gx.token_ids == cold(q25, ext)
    common = next(i for i, (x, y) in enumerate(zip(ext.input_ids, second.input_ids, strict=False)) if x != y)
    assert eng.stats["prefix_reused_tokens"] - reused <= common


def test_new_image_in_the_remainder_gets_its_features(pipe, encodes):
    """Turn 2 brings a second picture: turn 1 (with its image) is reused, only the new image is encoded
    and scattered into the remainder (Qwen3-VL: with its DeepStack levels)."""
    conv = [user(picture(41), "what is this?")]
    first = pipe.prepare(conv)
    eng = Engine(pipe.model, n_slots=2, max_len=512)
    seen = encodes(pipe.model)
    g1 = eng.generate(first, params(pipe))
    said = pipe.processor.decode(g1.token_ids)
    second = pipe.prepare(conv + [{"role": "assistant", "content": said}, user("and this one?", picture(42))])
    before = eng.stats
    g2 = eng.generate(second, params(pipe))
    assert len(seen) == 2 and eng.stats["vision_misses"] - before["vision_misses"] == 1
    assert eng.stats["prefix_reused_tokens"] - before["prefix_reused_tokens"] >= len(first.input_ids)
    assert g2.token_ids == cold(pipe, second)
