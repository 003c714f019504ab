"""The public API on tiny checkpoints: chat options, streaming, video, grounding boxes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import qwenvl


@pytest.fixture(scope="module")
def pipe25(tiny_ckpt):
    folder, _ = tiny_ckpt("qwen2_5_vl")
    return qwenvl.load(folder)  # load's default dtype ("auto"): these tests check behaviour, not numbers


@pytest.fixture(scope="module")
def pipe25_fp32(tiny_ckpt):
    """fp32, for tests of exact token equality that bf16 rounding could break."""
    folder, _ = tiny_ckpt("qwen2_5_vl")
    return qwenvl.load(folder, dtype="float32")


def msg(*parts):
    return [{"role": "user", "content": list(parts)}]


IMG = {"type": "image", "image": Image.fromarray(np.full((60, 90, 3), 200, np.uint8))}


def test_chat_result_fields(pipe25):
    out = pipe25.chat(msg(IMG, {"type": "text", "text": "hi"}), max_new_tokens=5, temperature=0.0)
    assert isinstance(out.text, str) and 0 < len(out.token_ids) <= 5
    assert out.finish_reason in ("stop", "length") and out.prompt_tokens > 10
    assert out.boxes == [] or all({"label", "x1", "y1", "x2", "y2"} <= b.keys() for b in out.boxes)


def test_seeded_sampling_reproducible_and_stream_matches(pipe25):
    m = msg({"type": "text", "text": "tell me"})
    a = pipe25.chat(m, max_new_tokens=8, temperature=1.0, seed=3)
    b = pipe25.chat(m, max_new_tokens=8, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids
    streamed = "".join(pipe25.stream(m, max_new_tokens=8, temperature=1.0, seed=3))
    assert streamed == a.text


def test_stop_token_ends_generation(pipe25):
    m = msg({"type": "text", "text": "x"})
    first = pipe25.chat(m, max_new_tokens=3, temperature=0.0).token_ids
    pipe25.generation_config = {"eos_token_id": [first[1]]}
    try:
        out = pipe25.chat(m, max_new_tokens=3, temperature=0.0)
    finally:
        pipe25.generation_config = {}
    assert out.token_ids == first[:1] and out.finish_reason == "stop"


def test_video_from_frames(pipe25):
    frames = [Image.fromarray(np.full((56, 84, 3), 20 * i, np.uint8)) for i in range(6)]
    inp = pipe25.prepare(msg({"type": "video", "video": frames}, {"type": "text", "text": "what moves?"}))
    ((t, h, w),) = inp.video_grid
    assert t == 3 and inp.input_ids.count(151656) == t * h * w // 4
    assert h * w * 14 * 14 >= 128 * 28 * 28  # video frames get at least the video min_pixels budget
    assert inp.second_per_grid == [1.0]  # 2 frames per grid at the default 2 fps
    assert len(pipe25.chat(msg({"type": "video", "video": frames}), max_new_tokens=2).token_ids) > 0


def test_openai_image_url_data_url(pipe25, tmp_path):
    import base64
    import io

    buf = io.BytesIO()
    IMG["image"].save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    a = pipe25.prepare(msg({"type": "image_url", "image_url": {"url": url}}))
    b = pipe25.prepare(msg(IMG))
    assert a.input_ids == b.input_ids and torch.equal(a.image_pixels, b.image_pixels)


def test_boxes_mapped_to_original_pixels(pipe25):
    """Qwen2.5-VL boxes are pixels of the resized input; .boxes are in the original image."""
    inp = pipe25.prepare(msg({"type": "image", "image": Image.new("RGB", (300, 150))}))
    w_in, h_in = pipe25.processor.input_sizes(inp)[-1]
    text = json.dumps([{"bbox_2d": [0, 0, w_in // 2, h_in], "label": "left half"}])
    (box,) = pipe25.boxes(text, inp)
    assert box["label"] == "left half"
    assert box["x1"] == 0 and abs(box["x2"] - 150) < 1e-6 and abs(box["y2"] - 150) < 1e-6


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text("not an image"), "not_image.png"),
    (lambda p: None, "missing.png"),
])
def test_bad_image_paths(pipe25, tmp_path, make, needle):
    path = tmp_path / needle
    make(path)
    with pytest.raises((ValueError, FileNotFoundError), match=needle):
        pipe25.chat(msg({"type": "image", "image": str(path)}), max_new_tokens=1)


def test_bad_messages(pipe25):
    with pytest.raises(ValueError, match="role"):
        pipe25.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="unknown content part type"):
        pipe25.chat(msg({"type": "audio", "audio": "x.wav"}))


def test_cli_reports_errors_without_traceback(tiny_ckpt, tmp_path, capsys):
    from qwenvl.cli import main

    folder, _ = tiny_ckpt("qwen2_5_vl")
    assert main(["chat", str(folder), "hi", "--image", str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the engine behind chat: streaming, batches, the new sampling options


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9, "seed": 5}])
def test_chat_stream_concatenates_to_the_text(pipe25, kw):
    m = msg(IMG, {"type": "text", "text": "what is it?"})
    whole = pipe25.chat(m, max_new_tokens=12, **kw)
    pieces = list(pipe25.chat(m, max_new_tokens=12, stream=True, **kw))
    assert "".join(pieces) == whole.text and len(pieces) > 1
    assert "".join(pipe25.stream(m, max_new_tokens=12, **kw)) == whole.text


def test_stop_string_cuts_text_streamed_and_not(pipe25):
    m = msg({"type": "text", "text": "go on"})
    full = pipe25.chat(m, max_new_tokens=16, temperature=0.0)
    stop = full.text[len(full.text) // 2:][:2]
    assert stop and full.text.index(stop) > 0
    cut = pipe25.chat(m, max_new_tokens=16, temperature=0.0, stop=[stop])
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    assert "".join(pipe25.chat(m, max_new_tokens=16, temperature=0.0, stop=stop, stream=True)) == cut.text


def test_generate_batch_equals_chat_alone(pipe25_fp32):
    pipe = pipe25_fp32
    convs = [msg({"type": "text", "text": "hello"}), msg(IMG, {"type": "text", "text": "colour?"}),
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a much longer question here"}]]
    kw = {"max_new_tokens": 8, "temperature": 0.7, "seed": 11, "repetition_penalty": 1.05}
    alone = [pipe.chat(c, **kw) for c in convs]
    batch = pipe.generate_batch(convs, **kw)
    assert [b.token_ids for b in batch] == [a.token_ids for a in alone]
    assert [b.text for b in batch] == [a.text for a in alone]


def test_new_sampling_options_and_logprobs(pipe25):
    m = msg({"type": "text", "text": "options"})
    out = pipe25.chat(m, max_new_tokens=5, temperature=1.0, min_p=0.05, presence_penalty=0.5,
                      frequency_penalty=0.5, seed=2, logprobs=True, top_logprobs=2)
    assert len(out.logprobs) == len(out.token_ids) > 0
    assert all(lp.token_id == t and len(lp.top) == 2 for lp, t in zip(out.logprobs, out.token_ids, strict=True))
    assert {"queue_s", "vision_s", "ttft_s", "decode_s"} <= out.timings.keys()
    with pytest.raises(ValueError, match="min_p"):
        pipe25.chat(m, min_p=1.5)


def test_abandoned_stream_frees_its_slot(pipe25):
    it = pipe25.chat(msg({"type": "text", "text": "long story"}), max_new_tokens=40, temperature=0.0, stream=True)
    next(it)
    assert pipe25.engine.busy
    it.close()
    assert not pipe25.engine.busy and len(pipe25.engine.pool.free) == pipe25.engine.pool.n_slots
