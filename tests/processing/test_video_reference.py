"""Video parity with transformers' own video processors and get_rope_index, from stored reference values.

Those processors need torchvision, which does not import beside this project's torch, so the values were
made once in a separate environment (tests/fixtures/video_reference/: the script, its pinned
requirements, a pip freeze) and are compared here with no torchvision at test time:
  reference_tf5.24.0.npz  inputs (uint8 frames), frame indices, grids, pixels (as the uint8 levels they
                          normalise), second_per_grid / timestamps, prompt ids, positions
  reference_tf4.57.6.npz  the same from 4.57.6 (first release with Qwen3-VL), pixels as SHA-256 digests
  reference_tf4.51.3.npz  Qwen2.5-VL positions of its release-era get_rope_index, on 4.57.6's ids
Tolerances: frame indices, grids, timestamps and ids exact; pixels exact in uint8 levels and within 1e-5
after normalisation; second_per_grid within 1e-6 (the reference stores float32).

Reference behaviour pinned on purpose (qwenvl follows the released semantics, see positions.py):
  * Qwen2.5-VL: 4.57 casts second_per_grid to int in get_rope_index, so frames sampled faster than one
    grid per second all get temporal id 0; 5.x restarts text after a video at start + max(h, w)/2,
    below the video's temporal ids when they outrun it. 4.51 (release era) does neither: ours == 4.51.
  * Qwen3-VL: 5.24 keeps the template's <|vision_start|> / <|vision_end|> around the timestamped frame
    groups (nested vision_start); 4.57 replaces them. Ours == 4.57, and 5.24's ids are ours wrapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from qwenvl.config import QwenVLConfig
from qwenvl.processing.chat_template import QWEN2_VL_TEMPLATE, QWEN3_VL_TEMPLATE, render_chat_segments
from qwenvl.processing.image import QWEN3_VL_IMAGE, ImageProcessorConfig
from qwenvl.processing.messages import normalize_messages
from qwenvl.processing.positions import RopeSpec, mrope_positions
from qwenvl.processing.processor import VIDEO_PAD, VISION_END, VISION_START, Qwen2VLProcessor, timestamped_video
from qwenvl.processing.tokenizer import QwenTokenizer
from qwenvl.processing.video import VideoOptions, preprocess_video
from qwenvl.processing.video_qwen3 import Qwen3VideoOptions
from tests.fixtures.qwen2_tokenizer import write_qwen2_tokenizer
from tests.fixtures.qwen3_tokenizer import write_qwen3_vl_folder

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "video_reference"
IMG, VID = 151655, 151656
REF = np.load(HERE / "reference_tf5.24.0.npz")
REF457 = np.load(HERE / "reference_tf4.57.6.npz")
REF451 = np.load(HERE / "reference_tf4.51.3.npz")
CASES = sorted({k.split("/")[0] for k in REF.files if "/" in k})
Q3_CFG = dataclasses.replace(QwenVLConfig(), vision=dataclasses.replace(QwenVLConfig().vision, patch_size=16,
                                                                        window_size=0))


def ref(case: str, key: str, src=REF) -> np.ndarray:
    return src[f"{case}/{key}"]


def has(case: str, key: str, src=REF) -> bool:
    return f"{case}/{key}" in src.files


def is_q3(case: str) -> bool:
    return case.startswith("q3_")


def video_opts(case: str):
    if is_q3(case):
        return Qwen3VideoOptions(fps=2.0 if bool(ref(case, "sampled")) else float(ref(case, "video_fps")))
    return VideoOptions(fps=float(ref(case, "video_fps")), min_pixels=int(ref(case, "video_min_pixels")),
                        max_pixels=int(ref(case, "video_max_pixels")))


def image_cfg(case: str) -> ImageProcessorConfig:
    return QWEN3_VL_IMAGE if is_q3(case) else ImageProcessorConfig()


@pytest.fixture(scope="module")
def processors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Qwen2VLProcessor]:
    q2 = QwenTokenizer.from_folder(write_qwen2_tokenizer(tmp_path_factory.mktemp("q25")))
    q3 = QwenTokenizer.from_folder(write_qwen3_vl_folder(tmp_path_factory.mktemp("q3")))
    cfg = QwenVLConfig()
    q25 = Qwen2VLProcessor(cfg, q2, QWEN2_VL_TEMPLATE, ImageProcessorConfig(), VideoOptions(),
                           rope=RopeSpec(IMG, VID, 2, absolute_time=True, tokens_per_second=2.0))
    q3p = Qwen2VLProcessor(Q3_CFG, q3, QWEN3_VL_TEMPLATE, QWEN3_VL_IMAGE, Qwen3VideoOptions(),
                           rope=RopeSpec(IMG, VID, 2, split_video_groups=True), video_timestamps=True)
    return {"q25": q25, "q3": q3p}


def messages(case: str) -> list[dict]:
    video = {"type": "video", "video": ref(case, "frames")}
    if bool(ref(case, "sampled")):
        video["source_fps"] = float(ref(case, "video_fps"))  # a whole clip: we sample it, as the reference did
    else:
        video.update(dataclasses.asdict(video_opts(case)))
        video.pop("nframes")
    content = [video, {"type": "text", "text": "What happens?"}]
    if has(case, "image"):
        content = [{"type": "image", "image": ref(case, "image")}, {"type": "text", "text": "and"}, *content]
    return [{"role": "user", "content": content}]


def run(case: str, processors: dict):
    return processors["q3" if is_q3(case) else "q25"](messages(case))


# ---------------------------------------------------------------- the fixture itself


def test_fixture_versions_and_inputs_are_the_scripts() -> None:
    assert str(REF["transformers_version"]) == "5.24.0" and str(REF457["transformers_version"]) == "4.57.6"
    assert str(REF451["transformers_version"]) == "4.51.3" and str(REF451["ids_from"]) == "4.57.6"
    spec = importlib.util.spec_from_file_location("make_video_reference", HERE / "make_video_reference.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # imports transformers but runs nothing
    assert sorted(script.CASES) == CASES
    for case in CASES:
        assert np.array_equal(script.CASES[case][1], ref(case, "frames")), case  # deterministic inputs
        # 4.57 saw the same inputs and produced the same pixels, indices and grids
        for key in ("frames", "pixel_levels"):
            digest = hashlib.sha256(np.ascontiguousarray(ref(case, key)).tobytes()).hexdigest()
            assert digest == str(ref(case, f"{key}_sha256", REF457)), (case, key)
        for key in ("indices", "video_grid_thw"):
            assert np.array_equal(ref(case, key), ref(case, key, REF457)), (case, key)
        assert float(ref(case, "pixel_residual")) < 1e-3


# ---------------------------------------------------------------- pixels, grids, frames, time


@pytest.mark.parametrize("case", CASES)
def test_video_pixels_grid_and_times_match_reference(case: str) -> None:
    fps = float(ref(case, "video_fps"))
    source = fps if bool(ref(case, "sampled")) else None
    ours = preprocess_video(ref(case, "frames"), image_cfg(case), video_opts(case), source)
    assert ours.frame_indices == ref(case, "indices").tolist()
    assert [list(ours.grid)] == ref(case, "video_grid_thw").tolist()
    mean = torch.tensor(ref(case, "image_mean"), dtype=torch.float32).repeat_interleave(ours.pixel_values.shape[1] // 3)
    std = torch.tensor(ref(case, "image_std"), dtype=torch.float32).repeat_interleave(ours.pixel_values.shape[1] // 3)
    levels = torch.from_numpy(ref(case, "pixel_levels")).float()
    torch.testing.assert_close(((ours.pixel_values * std + mean) * 255).round(), levels, atol=0, rtol=0)
    torch.testing.assert_close(ours.pixel_values, (levels / 255 - mean) / std, atol=1e-5, rtol=0)
    assert float(ours.pixel_values.double().sum()) == pytest.approx(float(ref(case, "pixel_sum")), abs=0.05)
    if is_q3(case):
        assert ours.timestamps == pytest.approx(ref(case, "timestamps").tolist(), abs=1e-12)
    else:
        assert ours.second_per_grid == pytest.approx(float(ref(case, "second_per_grid")[0]), abs=1e-6)


# ---------------------------------------------------------------- prompt ids and positions


@pytest.mark.parametrize("case", [c for c in CASES if not is_q3(c)])
def test_qwen25_ids_and_positions(case: str, processors: dict) -> None:
    inputs = run(case, processors)
    assert inputs.input_ids == ref(case, "input_ids").tolist() == ref(case, "input_ids", REF457).tolist()
    if has(case, "image_grid_thw"):
        assert [list(g) for g in inputs.image_grid] == ref(case, "image_grid_thw").tolist()
    pos = inputs.positions.numpy()
    assert np.array_equal(pos, ref(case, "positions", REF451))
    assert inputs.rope_delta == int(ref(case, "rope_delta", REF451))
    p457, p524 = ref(case, "positions", REF457), ref(case, "positions")
    t, h, w = inputs.video_grid[0]
    if inputs.second_per_grid[0] < 1:  # (a) 4.57 truncates 2/3 s per grid to 0: every frame group at one T id
        assert not np.array_equal(pos, p457) and np.array_equal(pos, p524)
        video_t = p457[0][np.asarray(inputs.input_ids) == VID]
        assert len(set(video_t.tolist())) == 1 and len(set(pos[0][np.asarray(inputs.input_ids) == VID])) == t
    else:  # (b) temporal ids outrun the spatial extent: 5.x restarts the text below them
        assert (t - 1) * 2 > max(h, w) // 2
        assert np.array_equal(pos, p457) and not np.array_equal(pos, p524)
        after = int(np.nonzero(np.asarray(inputs.input_ids) == VID)[0][-1]) + 1
        assert p524[0, after] < pos[0, after] and np.array_equal(p524[:, :after], pos[:, :after])


def _ids_524_layout(proc: Qwen2VLProcessor, msgs: list[dict], inputs) -> list[int]:
    """Our prompt with 5.24's layout: the template's own <vs> ... <ve> kept around the timestamped groups."""
    norm, _ = normalize_messages(msgs)
    stamps = iter(inputs.video_timestamps)
    triple = VISION_START + VIDEO_PAD + VISION_END
    segments = [(text.replace(triple, VISION_START + timestamped_video(next(stamps)) + VISION_END)
                 if trusted and triple in text else text, trusted)
                for text, trusted in render_chat_segments(norm, proc.template).segments]
    return proc.expand(proc.tokenizer.encode_segments(segments), inputs.image_grid, inputs.video_grid)


@pytest.mark.parametrize("case", [c for c in CASES if is_q3(c)])
def test_qwen3_ids_and_positions(case: str, processors: dict) -> None:
    proc = processors["q3"]
    msgs = messages(case)
    inputs = proc(msgs)
    assert inputs.input_ids == ref(case, "input_ids", REF457).tolist()  # the release's layout
    assert np.array_equal(inputs.positions.numpy(), ref(case, "positions", REF457))
    assert inputs.rope_delta == int(ref(case, "rope_delta", REF457))
    if has(case, "image_grid_thw"):
        assert [list(g) for g in inputs.image_grid] == ref(case, "image_grid_thw").tolist()
    assert inputs.video_timestamps == [pytest.approx(ref(case, "timestamps").tolist(), abs=1e-12)]
    # 5.24: nested vision_start; our position function on its own ids gives its positions
    ids524 = ref(case, "input_ids").tolist()
    assert ids524 == _ids_524_layout(proc, msgs, inputs) and len(ids524) == len(inputs.input_ids) + 2
    pos, delta = mrope_positions(ids524, proc.rope, inputs.image_grid, inputs.video_grid)
    assert np.array_equal(pos.numpy(), ref(case, "positions")) and delta == int(ref(case, "rope_delta"))
