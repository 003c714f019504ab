"""Video file decoding with PyAV: frame count and rate of a file, and decoding only the sampled frames.

Which frames to sample is video.py's business (the rules differ per generation); this module only
counts, reports the stream's frame rate and decodes the indices it is given.

Must not: hold every decoded frame of a long video (only the wanted frames are converted and kept),
or import PyAV at module import: `av` (the qwenvl[video] extra) is imported when a file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _import_av() -> Any:
    try:
        import av  # the optional qwenvl[video] extra
    except ImportError as e:
        raise ImportError("reading video files needs PyAV: pip install 'qwenvl[video]'") from e
    return av


def _stream_fps(stream: Any, total: int, name: str) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    if stream.duration and stream.time_base:
        return total / float(stream.duration * stream.time_base)
    raise ValueError(f"{name}: the video stream reports no frame rate")


def probe_video_file(path: Path, name: str) -> tuple[int, float]:
    """(total frames, frames per second) of a file's first video stream; errors name the file."""
    av = _import_av()
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {name}")
    if path.is_dir():
        raise ValueError(f"{name} is a directory, not a video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream")
            stream = container.streams.video[0]
            # Matroska/WebM often leave the frame count at 0: count packets (demux only, no decoding).
            total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            if total < 1:
                raise ValueError(f"{name} has no video frames")
            return total, _stream_fps(stream, total, name)
    except av.FFmpegError as e:
        raise ValueError(f"{name} is not a readable video ({e})") from e


def decode_video_frames(path: Path, indices: list[int], name: str) -> np.ndarray:
    """Decode in order, converting only the wanted (ascending) indices to RGB -> uint8 [n, H, W, 3].

    The container's frame count can overstate what decodes; indices past the last decodable frame
    reuse that last frame.
    """
    av = _import_av()
    want: dict[int, list[int]] = {}
    for pos, i in enumerate(indices):
        want.setdefault(i, []).append(pos)
    out: np.ndarray | None = None
    filled = 0
    last = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                last = frame
                if i in want:
                    rgb = frame.to_ndarray(format="rgb24")
                    if out is None:
                        out = np.empty((len(indices), *rgb.shape), np.uint8)
                    elif rgb.shape != out.shape[1:]:
                        raise ValueError(f"{name}: frame size changes mid-stream ({rgb.shape} vs {out.shape[1:]})")
                    out[want[i]] = rgb
                    filled = want[i][-1] + 1  # indices ascend, so positions fill in order
                if i >= indices[-1]:
                    break
            if last is None or out is None:  # index 0 is always wanted, so out exists once anything decoded
                raise ValueError(f"{name}: no frame could be decoded")
            if filled < len(indices):
                out[filled:] = last.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
        raise ValueError(f"{name} is not a readable video ({e})") from e
    return out
