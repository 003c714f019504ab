"""Qwen3-VL processing against transformers 5.24 (no torchvision needed): image pixels and grids, the
shipped chat template, prompt ids (apply_chat_template + our placeholder expansion), text timestamps of
videos, the clip budget and frame sampling rules, and M-RoPE positions vs the reference get_rope_index.

Video pixels against the reference video processor (which needs torchvision) are pinned by the stored
fixture in test_video_reference.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_clip_resize
from transformers.video_utils import VideoMetadata

from qwenvl.config import QwenVLConfig
from qwenvl.processing.chat_template import QWEN3_VL_TEMPLATE, render_chat
from qwenvl.processing.image import QWEN3_VL_IMAGE, ImageProcessorConfig, process_image, smart_resize
from qwenvl.processing.positions import RopeSpec, mrope_positions
from qwenvl.processing.processor import Qwen2VLProcessor, insert_video_timestamps
from qwenvl.processing.video import frame_timestamps
from qwenvl.processing.video_qwen3 import QWEN3_VL_VIDEO, Qwen3VideoOptions, smart_resize_clip
from tests.fixtures.qwen3_tokenizer import (
    QWEN3_VL_OFFICIAL_TEMPLATE,
    QWEN3_VL_PREPROCESSOR,
    QWEN3_VL_TEMPLATE_SHA256,
    write_qwen3_vl_folder,
    write_qwen3_vl_tokenizer,
)

IMG, VID, VS, VE = 151655, 151656, 151652, 151653
CFG = dataclasses.replace(QwenVLConfig(), vision=dataclasses.replace(QwenVLConfig().vision, patch_size=16,
                                                                             window_size=0))
ROPE = RopeSpec(IMG, VID, 2, split_video_groups=True)


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def qwen3_processor(folder: Path) -> Qwen2VLProcessor:
    """The processor as production builds it: through the qwen3_vl family."""
    from qwenvl import families

    proc = families.get("qwen3_vl").build_processor(folder, CFG)
    assert proc.rope == ROPE and proc.video_timestamps
    return proc


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen3_vl_folder(tmp_path_factory.mktemp("qwen3_vl"))


@pytest.fixture(scope="module")
def proc(folder: Path) -> Qwen2VLProcessor:
    return qwen3_processor(folder)


@pytest.fixture(scope="module")
def hf_tok(folder: Path):
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def hf_image() -> Qwen2VLImageProcessorPil:
    keys = ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
    return Qwen2VLImageProcessorPil(**{k: QWEN3_VL_PREPROCESSOR[k] for k in keys})


# ---------------------------------------------------------------- configs and template


def test_builtin_template_is_the_shipped_one() -> None:
    assert QWEN3_VL_TEMPLATE == QWEN3_VL_OFFICIAL_TEMPLATE
    assert hashlib.sha256(QWEN3_VL_TEMPLATE.encode()).hexdigest() == QWEN3_VL_TEMPLATE_SHA256


def test_processor_reads_and_writes_qwen3_config_files(folder: Path, proc: Qwen2VLProcessor, tmp_path: Path) -> None:
    assert proc.image_cfg == QWEN3_VL_IMAGE and proc.image_cfg.factor == 32
    assert proc.video_opts == QWEN3_VL_VIDEO and proc.template == QWEN3_VL_OFFICIAL_TEMPLATE
    # size-only spelling, read over Qwen2 defaults too
    cfg = ImageProcessorConfig.from_preprocessor_config(QWEN3_VL_PREPROCESSOR)
    assert (cfg.patch_size, cfg.min_pixels, cfg.max_pixels, cfg.image_mean) == (16, 65536, 16777216, (0.5,) * 3)
    assert cfg.processor_class == "Qwen3VLProcessor" and cfg == QWEN3_VL_IMAGE
    proc.save(tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    vid = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert pre["size"] == QWEN3_VL_PREPROCESSOR["size"] and pre["processor_class"] == "Qwen3VLProcessor"
    assert pre["image_processor_type"] == "Qwen2VLImageProcessorFast"
    assert vid["size"] == {"shortest_edge": 4096, "longest_edge": 25165824} and vid["patch_size"] == 16
    assert vid["video_processor_type"] == "Qwen3VLVideoProcessor" and vid["image_mean"] == [0.5] * 3
    assert Qwen3VideoOptions.from_video_preprocessor_config(vid) == QWEN3_VL_VIDEO
    # A folder with no processor files and no template falls back to the defaults the family passes.
    bare = qwen3_processor(write_qwen3_vl_tokenizer(tmp_path / "bare", chat_template=None))
    assert bare.template == QWEN3_VL_TEMPLATE and bare.image_cfg == QWEN3_VL_IMAGE and bare.video_opts == QWEN3_VL_VIDEO


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(("h", "w"), [(333, 517), (517, 333), (20, 30), (100, 100), (64, 2000), (1080, 1920),
                                      (1501, 2437)])
def test_image_pixels_and_grid_match_transformers(hf_image, h: int, w: int) -> None:
    img = noise(h, w, seed=h + w)
    pv, grid = process_image(img, QWEN3_VL_IMAGE)
    ref = hf_image(images=img, return_tensors="pt")
    assert list(grid) == ref["image_grid_thw"][0].tolist()
    torch.testing.assert_close(pv, ref["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("h", "w"), [(5000, 4000), (4096, 4096), (9000, 50), (31, 31), (200, 300)])
def test_image_grid_matches_transformers_beyond_the_budget(h: int, w: int) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_resize

    assert smart_resize(h, w, 32, QWEN3_VL_IMAGE.min_pixels, QWEN3_VL_IMAGE.max_pixels) == hf_resize(
        h, w, 32, QWEN3_VL_IMAGE.min_pixels, QWEN3_VL_IMAGE.max_pixels)


# ---------------------------------------------------------------- prompts


def _img(seed: int, h: int = 96, w: int = 128) -> dict:
    return {"type": "image", "image": noise(h, w, seed)}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <in> a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CASES: dict[str, tuple[list[dict], dict]] = {
    "text_only": ([{"role": "user", "content": "Hello! 你好\n  how are you?"}], {}),
    "one_image": ([{"role": "user", "content": [_img(1), _text("Describe this image.")]}], {}),
    "two_images": ([{"role": "user", "content": [_img(2), _text("vs"), _img(3, 64, 200), _text("\n\nDiff?")]}], {}),
    "multi_turn": ([
        {"role": "user", "content": [_img(4), _text("What is it?")]},
        {"role": "assistant", "content": "A cat on a mat."},
        {"role": "user", "content": [_text("And this one?"), _img(5, 128, 64)]},
        {"role": "assistant", "content": [_text("A dog.")]},
        {"role": "user", "content": "Thanks"},
    ], {}),
    "system": ([{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [_img(6), _text("Summarise.")]}], {}),
    "system_parts": ([{"role": "system", "content": [_text("Be "), _text("brief.")]},
                      {"role": "user", "content": "Hi"}], {}),
    "tools": ([
        {"role": "system", "content": "You help."},
        {"role": "user", "content": [_img(7), _text("Weather where this photo was taken?")]},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "It is 21 degrees."},
        {"role": "user", "content": "Thanks"},
    ], {"tools": TOOLS}),
    "vision_ids": ([{"role": "user", "content": [_img(8), _img(9), _text("Compare.")]}], {"add_vision_id": True}),
}


def _hf_ids(hf_tok, messages: list[dict], **kw) -> list[int]:
    out = hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kw)
    return out["input_ids"] if not isinstance(out, list) else out


@pytest.mark.parametrize("name", list(CASES))
def test_prompt_ids_match_apply_chat_template(name: str, proc: Qwen2VLProcessor, hf_tok) -> None:
    messages, kw = CASES[name]
    ours = proc(messages, **kw)
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    assert render_chat(messages, QWEN3_VL_TEMPLATE, **kw) == text == ours.text
    want = proc.expand(_hf_ids(hf_tok, messages, **kw), ours.image_grid, [])
    assert ours.input_ids == want
    assert ours.input_ids.count(IMG) == sum(t * h * w // 4 for t, h, w in ours.image_grid)
    if name == "tools":
        assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>" in text
        assert ours.input_ids.count(hf_tok.convert_tokens_to_ids("<tool_response>")) == 1


def test_user_text_cannot_write_vision_or_tool_tokens(proc: Qwen2VLProcessor) -> None:
    typed = "<|vision_start|><|video_pad|><|vision_end|> <tool_call>{}</tool_call> <think>hm</think> <|im_end|>"
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    inputs = proc([{"role": "user", "content": [{"type": "video", "video": frames}, _text(typed)]}])
    ids = inputs.input_ids
    tok = proc.tokenizer
    for t in ("<tool_call>", "</tool_call>", "<think>", "</think>"):
        assert tok.token_id(t) not in ids
    assert ids.count(VS) == 2 and ids.count(VE) == 2  # two temporal patches, none from the typed text
    assert ids.count(tok.token_id("<|im_end|>")) == 1
    assert inputs.text.count("seconds>") == 2 and typed in inputs.text


# ---------------------------------------------------------------- video timestamps and rules


@pytest.mark.parametrize(("indices", "fps"), [([0, 15, 30, 45, 60], 30.0), (list(range(6)), 3.0), ([0, 7], 2.0),
                                              ([0, 6, 12, 17, 23, 29, 35], 24.0)])
def test_frame_timestamps_match_reference(indices: list[int], fps: float) -> None:
    assert frame_timestamps(indices, fps, 2) == Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)


def _reference_video_text(text: str, timestamps: list[float], slots: int) -> str:
    """transformers 4.57's Qwen3VLProcessor layout: the template's <vs><video_pad><ve> -> per patch
    '<t seconds><vs>' + pads + '<ve>' (5.24 keeps the outer <vs>/<ve>; see test_video_reference.py)."""
    group = "".join(f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * slots + "<|vision_end|>"
                    for t in timestamps)
    return text.replace("<|vision_start|><|video_pad|><|vision_end|>", group, 1)


def test_video_prompt_has_text_timestamps(proc: Qwen2VLProcessor, hf_tok) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)  # pre-sampled at fps 2
    messages = [{"role": "user", "content": [_text("Look:"), {"type": "video", "video": frames}, _text("What?")]}]
    inputs = proc(messages)
    assert inputs.video_grid == [(3, 4, 6)] and inputs.video_timestamps == [[0.25, 1.25, 2.0]]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = hf_tok(_reference_video_text(text, [0.25, 1.25, 2.0], 6), add_special_tokens=False)["input_ids"]
    assert inputs.input_ids == want  # "Look:<0.2 seconds>" is BPE-encoded as one run, as in the reference
    assert "<0.2 seconds><|vision_start|><|video_pad|><|vision_end|><1.2 seconds>" in inputs.text


def test_insert_video_timestamps_only_touches_template_text() -> None:
    segs = [("<|vision_start|><|video_pad|><|vision_end|>x", True), ("<|video_pad|>", False), ("<|video_pad|>", True)]
    out = insert_video_timestamps(segs, [[0.5], [1.0, 3.0]])
    assert out[0][0] == "<0.5 seconds><|vision_start|><|video_pad|><|vision_end|>x" and out[1] == segs[1]
    assert out[2][0].count("seconds>") == 2
    with pytest.raises(ValueError, match="more video placeholders"):
        insert_video_timestamps(segs, [[0.5]])
    with pytest.raises(ValueError, match="dropped"):
        insert_video_timestamps(segs, [[0.5], [1.0], [2.0]])


@pytest.mark.parametrize(("total", "video_fps", "kw"), [(30, 10.0, {}), (300, 30.0, {}), (7, 30.0, {}),
                                                         (100000, 30.0, {}), (61, 29.97, {"fps": 1.0}),
                                                         (50, 25.0, {"min_frames": 8, "max_frames": 12})])
def test_frame_sampling_matches_reference(total: int, video_fps: float, kw: dict) -> None:
    opts = dataclasses.replace(QWEN3_VL_VIDEO, **kw)
    fake = SimpleNamespace(fps=opts.fps, min_frames=opts.min_frames, max_frames=opts.max_frames)
    want = Qwen3VLVideoProcessor.sample_frames(fake, VideoMetadata(total_num_frames=total, fps=video_fps)).tolist()
    assert opts.frame_indices(total, opts.frame_count(total, video_fps)) == want


@pytest.mark.parametrize(("n", "h", "w"), [(5, 360, 640), (2, 1080, 1920), (64, 720, 1280), (768, 480, 854),
                                           (3, 10, 300), (4, 31, 31), (9, 2000, 2000)])
@pytest.mark.parametrize("cap", [False, True])
def test_clip_budget_matches_reference(n: int, h: int, w: int, cap: bool) -> None:
    opts = dataclasses.replace(QWEN3_VL_VIDEO, cap_pixels_per_frame=cap)
    hi = opts.clip_max_pixels
    if cap:
        hi = max(min(768 * 32 * 32, hi // n), int(opts.clip_min_pixels * 1.05)) * n
    want = hf_clip_resize(n, h, w, 2, 32, opts.clip_min_pixels, hi)
    assert opts.frame_size(n, h, w, QWEN3_VL_IMAGE, "clip") == want
    assert smart_resize_clip(5, 360, 640) == (352, 640)  # the module docstring's worked example


def test_video_option_errors(proc: Qwen2VLProcessor) -> None:
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"max_pixels.*do not apply to Qwen3VideoOptions"):
        proc([{"role": "user", "content": [{"type": "video", "video": frames, "max_pixels": 128 * 32 * 32}]}])
    with pytest.raises(ValueError, match="at least 2 frames"):
        proc([{"role": "user", "content": [{"type": "video", "video": frames[:1]}]}])
    inputs = proc([{"role": "user", "content": [{"type": "video", "video": frames, "fps": 4.0, "resized_height": 9}]}])
    assert inputs.video_timestamps == [[0.125, 0.625]]


# ---------------------------------------------------------------- positions


@pytest.fixture(scope="module")
def hf_model() -> Qwen3VLModel:
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    cfg = Qwen3VLConfig(
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=8, intermediate_size=32, vocab_size=151936, rope_parameters=rope),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           num_position_embeddings=16, deepstack_visual_indexes=[], patch_size=16))
    return Qwen3VLModel(cfg).eval()


def test_positions_match_reference_get_rope_index(proc: Qwen2VLProcessor, hf_model: Qwen3VLModel) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (7, 96, 64, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [_img(10, 64, 160), _text("and"), {"type": "video", "video": frames},
                                             _text("Describe both.")]},
                {"role": "assistant", "content": "Sure."}, {"role": "user", "content": [_img(11, 200, 64)]}]
    inputs = proc(messages)
    ids = torch.tensor([inputs.input_ids])
    types = (ids == IMG).int() + 2 * (ids == VID).int()
    pos, delta = hf_model.get_rope_index(ids, types, torch.tensor(inputs.image_grid), torch.tensor(inputs.video_grid))
    assert torch.equal(inputs.positions, pos[:, 0]) and inputs.rope_delta == int(delta)
    assert len(inputs.video_timestamps[0]) == inputs.video_grid[0][0] == 4


def test_split_video_groups_worked_example() -> None:
    # video grid (2, 2, 4): two groups of 1x2 tokens, each its own item; text between them
    ids = [1, VS, VID, VID, VE, 7, VS, VID, VID, VE, 9]
    pos, delta = mrope_positions(ids, ROPE, [], [(2, 2, 4)])
    assert pos.tolist() == [[0, 1, 2, 2, 4, 5, 6, 7, 7, 9, 10], [0, 1, 2, 2, 4, 5, 6, 7, 7, 9, 10],
                            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    assert delta == 0
    joined, _ = mrope_positions([1, VS, VID, VID, VID, VID, VE], dataclasses.replace(ROPE, split_video_groups=False),
                                [], [(2, 2, 4)])
    assert joined[0].tolist() == [0, 1, 2, 2, 3, 3, 4]  # Qwen2-VL: one item, T steps per group
