"""Image preprocessing: parity with transformers' PIL Qwen2-VL processor, facts B.4 examples, bad input."""

from __future__ import annotations

import base64
import io
import math
import random
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from qwenvl.processing.image import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageProcessorConfig,
    load_image,
    process_image,
    process_image_fixed,
    smart_resize,
)

CFG = ImageProcessorConfig()


def noise_image(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hf_proc() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(min_pixels=CFG.min_pixels, max_pixels=CFG.max_pixels)


def hf_run(proc: Qwen2VLImageProcessorPil, img: Image.Image, **size: int) -> tuple[torch.Tensor, list[int]]:
    kw = {"size": {"shortest_edge": size["min_pixels"], "longest_edge": size["max_pixels"]}} if size else {}
    out = proc(images=img, return_tensors="pt", **kw)
    return out["pixel_values"], out["image_grid_thw"][0].tolist()


# ---------------------------------------------------------------- smart_resize


def test_smart_resize_matches_transformers_on_random_sizes():
    rng = random.Random(0)
    budgets = [(CFG.min_pixels, CFG.max_pixels), (56 * 56, 28 * 28 * 1280), (128 * 784, 768 * 784), (3136, 3136)]
    checked = 0
    while checked < 3000:
        h, w = rng.randint(14, 8000), rng.randint(14, 8000)
        if max(h, w) / min(h, w) > 200:
            continue
        lo, hi = budgets[checked % len(budgets)]
        assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)
        checked += 1


def test_smart_resize_guards_sides_below_half_a_factor():
    # Our max(factor, round(...)) guard follows qwen-vl-utils: a 10 px side rounds to 28, not 0.
    # transformers drops that guard, rounds to 0 and takes the min_pixels branch, giving (28, 700).
    assert smart_resize(10, 1500) == (28, 1512)
    assert hf_smart_resize(10, 1500, 28, CFG.min_pixels, CFG.max_pixels) == (28, 700)
    # Shrinking an extreme aspect ratio never yields a zero side (qwen-vl-utils could).
    assert smart_resize(20, 3000, max_pixels=3136) == (28, 672)


def test_smart_resize_uses_bankers_rounding():
    # 42 / 28 = 1.5 -> round() gives 2 (even); 70 / 28 = 2.5 -> 2 (even), not 3.
    assert smart_resize(42, 70, min_pixels=1, max_pixels=10**9) == (56, 56)


@pytest.mark.parametrize(
    ("h", "w", "resized", "tokens"),
    [
        (1080, 1920, (1092, 1932), 2691),
        (480, 640, (476, 644), 391),
        (100, 100, (112, 112), 16),
        (20, 20, (56, 56), 4),
        (4000, 6000, (2912, 4368), 16224),
        (448, 448, (448, 448), 256),
    ],
)
def test_facts_b4_worked_examples(h, w, resized, tokens):
    rh, rw = smart_resize(h, w)
    assert (rh, rw) == resized
    assert (rh // 14) * (rw // 14) // 4 == tokens


def test_smart_resize_rejects_aspect_ratio_over_200():
    with pytest.raises(ValueError, match="aspect ratio 201.0"):
        smart_resize(10, 2010)
    assert smart_resize(10, 2000)  # exactly 200 is allowed


# ---------------------------------------------------------------- pixel parity


@pytest.mark.parametrize(
    ("h", "w"),
    [(1080, 1920), (30, 5000), (5000, 40), (20, 20), (333, 517), (481, 639), (57, 29)],
)
def test_pixel_values_match_transformers(hf_proc, h, w):
    img = noise_image(h, w, seed=h * 7 + w)
    ours, grid = process_image(img, CFG)
    ref, ref_grid = hf_run(hf_proc, img)
    assert list(grid) == ref_grid
    assert ours.dtype == torch.float32 and ours.shape == (grid[1] * grid[2], 3 * 2 * 14 * 14)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("min_pixels", "max_pixels"), [(56 * 56, 28 * 28 * 256), (256 * 784, 28 * 28 * 1280), (3136, 3136)]
)
def test_pixel_budget_overrides_match_transformers(hf_proc, min_pixels, max_pixels):
    img = noise_image(700, 1000, seed=3)
    ours, grid = process_image(img, CFG, min_pixels=min_pixels, max_pixels=max_pixels)
    ref, ref_grid = hf_run(hf_proc, img, min_pixels=min_pixels, max_pixels=max_pixels)
    assert list(grid) == ref_grid
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # The same budget set on the config gives the same result.
    cfg = ImageProcessorConfig(min_pixels=min_pixels, max_pixels=max_pixels)
    assert torch.equal(process_image(img, cfg)[0], ours)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_non_rgb_modes_match_transformers(hf_proc, mode):
    img = noise_image(90, 130, seed=5, mode=mode)
    ours, grid = process_image(img, CFG)
    ref, ref_grid = hf_run(hf_proc, img)
    assert list(grid) == ref_grid
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_patch_order_is_merge_block_major_with_c_t_ph_pw_features():
    # Independent slow construction on a tiny image: rows (bh, bw, mh, mw), features [C, T, ph, pw].
    img = noise_image(56, 84, seed=9)
    pv, grid = process_image(img, CFG)
    assert grid == (1, 4, 6)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
    x = x / torch.tensor(OPENAI_CLIP_STD)[:, None, None]
    rows = []
    for bh in range(2):
        for bw in range(3):
            for mh in range(2):
                for mw in range(2):
                    r, c = (bh * 2 + mh) * 14, (bw * 2 + mw) * 14
                    patch = x[:, r : r + 14, c : c + 14]
                    rows.append(torch.stack([patch, patch], dim=1).reshape(-1))  # [C, T, 14, 14]
    torch.testing.assert_close(pv, torch.stack(rows), atol=1e-6, rtol=0)


def test_1080p_is_fast():
    img = noise_image(1080, 1920)
    start = time.perf_counter()
    pv, _ = process_image(img, CFG)
    assert pv.shape == (10764, 1176)
    assert time.perf_counter() - start < 3.0  # ~0.15 s on 2 CPU cores; loose to avoid flakes


# ---------------------------------------------------------------- config


def test_config_reads_released_checkpoint_spelling():
    cfg = ImageProcessorConfig.from_preprocessor_config(
        {
            "min_pixels": 3136,
            "max_pixels": 12845056,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD),
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        }
    )
    assert cfg == ImageProcessorConfig()


def test_config_reads_transformers5_size_spelling_and_beats_defaults():
    cfg = ImageProcessorConfig.from_preprocessor_config({"size": {"shortest_edge": 1000, "longest_edge": 50000}})
    assert (cfg.min_pixels, cfg.max_pixels) == (1000, 50000)
    old_in_size = ImageProcessorConfig.from_preprocessor_config({"size": {"min_pixels": 10, "max_pixels": 20}})
    assert (old_in_size.min_pixels, old_in_size.max_pixels) == (10, 20)
    # Top-level keys win over size, as transformers' loader does.
    both = ImageProcessorConfig.from_preprocessor_config(
        {"size": {"shortest_edge": 1000, "longest_edge": 50000}, "max_pixels": 40000}
    )
    assert (both.min_pixels, both.max_pixels) == (1000, 40000)


def test_config_round_trips_and_transformers_reads_it():
    cfg = ImageProcessorConfig(min_pixels=4 * 784, max_pixels=1280 * 784, image_mean=(0.5, 0.5, 0.5))
    d = cfg.to_preprocessor_config()
    assert d["image_processor_type"] == "Qwen2VLImageProcessor"
    assert d["size"] == {"shortest_edge": 4 * 784, "longest_edge": 1280 * 784}
    assert ImageProcessorConfig.from_preprocessor_config(d) == cfg
    ref = Qwen2VLImageProcessorPil(**{k: v for k, v in d.items() if k != "image_processor_type"})
    assert (ref.size["shortest_edge"], ref.size["longest_edge"]) == (cfg.min_pixels, cfg.max_pixels)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"min_pixels": 5000, "max_pixels": 4000}, "min_pixels"),
        ({"patch_size": 0}, "patch_size"),
        ({"max_pixels": -1}, "max_pixels"),
        ({"size": {"height": 448, "width": 448}}, "shortest_edge"),
        ({"size": 448}, "'size' must be a dict"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_mean": 0.5}, "image_mean"),
    ],
)
def test_config_rejects_bad_values(d, match):
    with pytest.raises(ValueError, match=match):
        ImageProcessorConfig.from_preprocessor_config(d)


# ---------------------------------------------------------------- loading


def test_all_source_kinds_load_the_same_pixels(tmp_path):
    img = noise_image(40, 50, seed=1)
    raw = png_bytes(img)
    path = tmp_path / "a.png"
    path.write_bytes(raw)
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    expected = np.array(img)
    for src in (str(path), path, "file://" + str(path), raw, url, img, expected):
        out = load_image(src)
        assert out.mode == "RGB" and np.array_equal(np.array(out), expected), type(src)


def test_transparent_pixels_become_white():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red, fully transparent
    a[0, 0, 3] = 255  # one opaque red pixel
    out = np.array(load_image(Image.fromarray(a, "RGBA")))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_file_that_is_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, not pixels")
    with pytest.raises(ValueError, match=r"notes\.jpg.*not an image"):
        process_image(p, CFG)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    raw = png_bytes(noise_image(64, 64), fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\..*truncated or corrupt"):
        process_image(p, CFG)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_image(raw[: len(raw) // 2])


@pytest.mark.parametrize("size", [(0, 0), (1, 1), (1, 50)])
def test_too_small_image_names_the_minimum(size):
    with pytest.raises(ValueError, match="at least 2 pixels"):
        process_image(Image.new("RGB", size), CFG)


def test_one_pixel_file_names_the_file(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(p)
    with pytest.raises(ValueError, match=r"dot\.png.*1x1.*at least 2 pixels"):
        load_image(p)


def test_aspect_ratio_over_200_names_the_source(tmp_path):
    p = tmp_path / "strip.png"
    Image.new("RGB", (4020, 20)).save(p)
    with pytest.raises(ValueError, match=r"strip\.png.*aspect ratio 201\.0.*200"):
        process_image(p, CFG)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64", "no ','"),
        ("data:image/png;base64,@@@not-base64@@@", "invalid base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image/\\* type"),
        ("data:image/png,rawdata", "only ';base64'"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not an image"),
    ],
)
def test_bad_data_url(url, match):
    with pytest.raises(ValueError, match=match) as e:
        load_image(url)
    assert "data URL" in str(e.value)


def test_remote_url_is_refused():
    with pytest.raises(ValueError, match="download the image first"):
        load_image("https://example.com/cat.png")


# ---------------------------------------------------------------- Qwen-VL v1


def test_fixed_448_shape_and_aspect_squash():
    out = process_image_fixed(noise_image(100, 300, seed=2))
    assert out.shape == (3, 448, 448) and out.dtype == torch.float32
    assert process_image_fixed(noise_image(30, 30), size=224).shape == (3, 224, 224)


def test_fixed_solid_colour_normalises_to_known_values():
    rgb = (255, 0, 128)
    out = process_image_fixed(Image.new("RGB", (640, 480), rgb))
    for c in range(3):
        expected = (rgb[c] / 255 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
        assert math.isclose(out[c].min().item(), expected, abs_tol=1e-5)
        assert math.isclose(out[c].max().item(), expected, abs_tol=1e-5)
