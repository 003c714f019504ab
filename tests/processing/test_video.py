"""Video preprocessing: qwen-vl-utils frame sampling, pixel budget, patches, PyAV decoding, bad input.

transformers' video processors import torchvision, which does not import beside this project's torch;
the direct comparison with them runs from stored reference values in test_video_reference.py (made
once in a separate environment). Here the pixels are also checked against the image path frame by
frame: exactly where no resize happens, and within one uint8 level where it does (we resize video like
torchvision on CPU, torch's uint8 bicubic-antialias kernel; images go through PIL bicubic).
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image

from qwenvl.processing.image import QWEN3_VL_IMAGE, ImageProcessorConfig, process_image
from qwenvl.processing.video import (
    VideoOptions,
    frame_pixel_budget,
    load_video,
    preprocess_video,
    process_video,
    read_video,
    sample_indices,
    smart_nframes,
)
from qwenvl.processing.video_qwen3 import QWEN3_VL_VIDEO

CFG = ImageProcessorConfig()
STEP = 8  # colour step per frame index, large against codec error at this size


def write_video(path, n=30, fps=10, w=64, h=48, codec="libx264") -> None:
    """n frames whose red channel is STEP * index (green the reverse), so decoded frames name their index."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.full((h, w, 3), 128, np.uint8)
            a[..., 0], a[..., 1] = STEP * i, 255 - STEP * i
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def frame_ids(frames) -> list[int]:
    return [round(float(np.asarray(f)[..., 0].mean()) / STEP) for f in frames]


def noise_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- sampling rules


@pytest.mark.parametrize(
    ("total", "video_fps", "opts", "expected"),
    [
        (30, 10, VideoOptions(), 6),  # 3 s at fps 2
        (10000, 30, VideoOptions(), 666),  # 666.7 -> floor to even
        (100000, 30, VideoOptions(), 768),  # max_frames
        (5, 30, VideoOptions(), 4),  # raised to min_frames, floored to even within total
        (3, 30, VideoOptions(), 2),
        (30, 10, VideoOptions(fps=1.0), 4),  # 3 -> min_frames 4
        (30, 10, VideoOptions(min_frames=3), 6),
        (30, 10, VideoOptions(nframes=10), 10),
        (30, 10, VideoOptions(nframes=5), 4),  # round(2.5) = 2 (banker's) -> 4
    ],
)
def test_smart_nframes(total, video_fps, opts, expected):
    assert smart_nframes(total, video_fps, opts) == expected


def test_smart_nframes_refuses_too_few_frames():
    with pytest.raises(ValueError, match="cannot sample"):
        smart_nframes(1, 30, VideoOptions())
    with pytest.raises(ValueError, match="cannot sample 40 frames"):
        smart_nframes(30, 10, VideoOptions(nframes=40))


def test_sample_indices_are_rounded_linspace():
    assert sample_indices(30, 6) == [0, 6, 12, 17, 23, 29]
    assert sample_indices(30, 4) == [0, 10, 19, 29]
    assert sample_indices(7, 4) == [0, 2, 4, 6]


def test_frame_pixel_budget():
    opts = VideoOptions()
    assert frame_pixel_budget(6, opts) == 768 * 784  # a short video gets the per-frame max
    assert frame_pixel_budget(768, opts) == pytest.approx(opts.total_pixels / 768 * 2)
    # A floor of 1.05 * min_pixels however many frames there are.
    assert frame_pixel_budget(10**6, opts) == int(128 * 784 * 1.05)


def test_video_options_validation():
    with pytest.raises(ValueError, match="fps"):
        VideoOptions(fps=0)
    with pytest.raises(ValueError, match="minimum exceeds"):
        VideoOptions(min_frames=10, max_frames=4)
    with pytest.raises(ValueError, match="nframes"):
        VideoOptions(nframes=0)


# ---------------------------------------------------------------- decoding files


@pytest.mark.parametrize(("suffix", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_file_sampling_picks_the_right_frames(tmp_path, suffix, codec):
    # webm leaves the container frame count at 0, exercising the packet-count fallback.
    path = tmp_path / f"clip.{suffix}"
    write_video(path, codec=codec)
    frames, fps = load_video(path, VideoOptions())
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == [0, 6, 12, 17, 23, 29]
    assert fps == pytest.approx(2.0)

    frames, fps = load_video(str(path), VideoOptions(fps=1.0))
    assert frame_ids(frames) == [0, 10, 19, 29]
    assert fps == pytest.approx(4 / 30 * 10)

    frames, _ = load_video(path, VideoOptions(nframes=10))
    assert frame_ids(frames) == sample_indices(30, 10)


def test_process_video_file_grid_and_seconds_per_grid(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path)
    pv, grid, spg = process_video(path, CFG)
    # 64x48 is below video min_pixels (128*28*28): smart_resize grows it to 280x392.
    assert grid == (3, 20, 28)
    assert pv.shape == (3 * 20 * 28, 1176) and pv.dtype == torch.float32
    assert spg == pytest.approx(1.0)  # temporal_patch_size 2 / sample fps 2
    _, grid, spg = process_video(path, CFG, VideoOptions(fps=1.0))
    assert grid == (2, 20, 28) and spg == pytest.approx(2 / (4 / 3))


def test_qwen3_rules_sample_a_file_without_rounding_to_even(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, n=25)
    video = preprocess_video(path, QWEN3_VL_IMAGE, QWEN3_VL_VIDEO)
    assert video.frame_indices == [0, 6, 12, 18, 24] and video.video_fps == pytest.approx(10.0)  # int(25/10*2) = 5
    # 48x64 -> 64x64: round(48 / 32) = round(1.5) = 2 (round half to even)
    assert video.grid == (3, 4, 4) and video.timestamps == pytest.approx([0.3, 1.5, 2.4])
    assert read_video(path, VideoOptions()).indices == [0, 8, 16, 24]  # qwen-vl-utils: floor to even


def test_a_whole_clip_array_with_source_fps_is_sampled_like_a_file():
    clip = noise_frames(30, 8, 8)
    v = read_video(clip, VideoOptions(), source_fps=10.0)
    assert v.indices == [0, 6, 12, 17, 23, 29] and v.sample_fps == pytest.approx(2.0)
    assert np.array_equal(v.frames, clip[v.indices])
    assert read_video(clip, VideoOptions()).indices == list(range(30))  # without it: frames already sampled


# ---------------------------------------------------------------- frame lists


def test_frame_list_keeps_all_frames_and_pads_odd_counts():
    frames = [Image.fromarray(f) for f in noise_frames(5, 56, 84)]
    loaded, fps = load_video(frames, VideoOptions(fps=4.0))
    assert len(loaded) == 5 and fps == 4.0  # a list is already sampled at opts.fps
    opts = VideoOptions(fps=4.0, min_pixels=56 * 84, max_pixels=56 * 84)
    pv, grid, spg = process_video(frames, CFG, opts)
    assert grid == (3, 4, 6) and spg == 0.5
    # The last temporal patch is frame 4 twice: its two T slices are equal.
    last = pv[-24:].view(24, 3, 2, 14, 14)
    assert torch.equal(last[:, :, 0], last[:, :, 1])


def test_frame_list_over_max_frames_is_subsampled():
    frames = list(noise_frames(9, 56, 56))
    loaded, fps = load_video(frames, VideoOptions(fps=3.0, max_frames=4, min_frames=2))
    assert len(loaded) == 4 and fps == pytest.approx(4 / 9 * 3.0)
    arr, _ = load_video(np.stack(frames), VideoOptions(fps=3.0, nframes=4))
    assert np.array_equal(arr, np.stack([frames[i] for i in sample_indices(9, 4)]))


def test_video_pixels_equal_the_image_path_without_resize():
    # 252x420 is already a multiple of 28 inside both the video and image budgets: no resize anywhere.
    frames = noise_frames(4, 252, 420, seed=1)
    pv, grid, _ = process_video(frames, CFG)
    assert grid == (2, 18, 30)
    pv = pv.view(2, 18 * 30, 3, 2, 14, 14)
    for i, frame in enumerate(frames):
        img_pv, img_grid = process_image(frame, CFG)
        assert img_grid == (1, 18, 30)
        assert torch.equal(pv[i // 2, :, :, i % 2], img_pv.view(-1, 3, 2, 14, 14)[:, :, 0])


def test_video_pixels_close_to_the_image_path_with_resize():
    frames = noise_frames(2, 500, 900, seed=2)
    frames[:, :250] = np.linspace(0, 255, 900, dtype=np.uint8)[None, None, :, None]  # smooth half
    pv, grid, _ = process_video(frames, CFG)
    h, w = grid[1] * 14, grid[2] * 14
    assert (h, w) == (504, 896)
    pv = pv.view(-1, 3, 2, 14, 14)
    for i, frame in enumerate(frames):
        resized = Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC)
        img_pv, _ = process_image(resized, CFG)
        diff = (pv[:, :, i] - img_pv.view(-1, 3, 2, 14, 14)[:, :, 0]).abs()
        # One uint8 level after normalisation is 1/255/std <= 0.0151.
        assert diff.max().item() <= 1 / 255 / min(CFG.image_std) + 1e-6
        assert diff.mean().item() < 1e-3


# ---------------------------------------------------------------- bad input


def test_missing_video_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        load_video(tmp_path / "gone.mp4", VideoOptions())


def test_file_that_is_not_a_video(tmp_path):
    p = tmp_path / "fake.mp4"
    p.write_text("not a video at all")
    with pytest.raises(ValueError, match=r"fake\.mp4.*not a readable video"):
        process_video(p, CFG)


def test_single_frame_video_file(tmp_path):
    p = tmp_path / "one.mp4"
    write_video(p, n=1)
    with pytest.raises(ValueError, match="cannot sample"):
        load_video(p, VideoOptions())


def test_bad_frame_lists():
    with pytest.raises(ValueError, match="empty"):
        load_video([], VideoOptions())
    mixed = [np.zeros((56, 56, 3), np.uint8), np.zeros((56, 84, 3), np.uint8)]
    with pytest.raises(ValueError, match="differ in size"):
        load_video(mixed, VideoOptions())
    with pytest.raises(ValueError, match="at least 2 pixels"):
        load_video([np.zeros((1, 56, 3), np.uint8)], VideoOptions())
    with pytest.raises(ValueError, match=r"aspect ratio.*200"):
        process_video(np.zeros((2, 2, 500, 3), np.uint8), CFG)
