"""Image preprocessing for Qwen-VL v1 (fixed 448x448) and Qwen2-VL / 2.5-VL / 3-VL (dynamic resolution).

Mirrors transformers' `Qwen2VLImageProcessor` (PIL path) and qwen-vl-utils `fetch_image` as described in
architecture-facts A.4 and B.1/B.4: smart_resize -> PIL BICUBIC -> /255 -> normalise -> patches in
the (t, h/2, w/2, 2, 2) merge-block order with each patch's features in [C, T, ph, pw] order.
Qwen3-VL uses the same processor class with other numbers (facts C): patch 16 (factor 32),
mean = std = 0.5 and a pixel budget of 65536 .. 16777216 (`QWEN3_VL_IMAGE`).

Must not: import the model, fetch anything over the network, or touch global PIL settings
(e.g. LOAD_TRUNCATED_IMAGES): a truncated file is an error, never a half-grey image.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS = 56 * 56  # 2x2 merge blocks of 28 px -> 4 LLM tokens
MAX_PIXELS = 28 * 28 * 16384  # the released preprocessor_config.json value (the Python class default is lower)
MAX_RATIO = 200
# A side of one pixel is a line, not an image; we refuse it rather than bicubic-smear it into a 28 px strip.
MIN_IMAGE_SIDE = 2
# Qwen3-VL-*-Instruct preprocessor_config.json (third-party copies agree): size {shortest_edge 65536,
# longest_edge 16777216} (64 .. 16384 LLM tokens at factor 32), patch 16, mean = std = 0.5.
QWEN3_VL_MEAN = QWEN3_VL_STD = (0.5, 0.5, 0.5)
QWEN3_VL_MIN_PIXELS = 65536
QWEN3_VL_MAX_PIXELS = 16777216

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Qwen2-VL / 2.5-VL / 3-VL image processor settings; field names are the preprocessor_config.json keys
    (image_processor_type / processor_class only round-trip a checkpoint's identity)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    # identity only: not part of equality (two configs that process alike are equal)
    image_processor_type: str = field(default="Qwen2VLImageProcessor", compare=False)
    processor_class: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"ImageProcessorConfig.{name} must be a positive int, got {v!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"ImageProcessorConfig: min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
                raise ValueError(f"ImageProcessorConfig.{name} must be 3 numbers (R, G, B), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))  # lists from JSON -> hashable tuple
        if min(self.image_std) <= 0:
            raise ValueError(f"ImageProcessorConfig.image_std must be > 0, got {self.image_std}")

    @property
    def factor(self) -> int:
        """Side length (pixels) of one merge block: resized sides are multiples of it (28 by default)."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_preprocessor_config(cls, d: dict, defaults: ImageProcessorConfig | None = None) -> ImageProcessorConfig:
        """Read a Hugging Face preprocessor_config.json dict; its values beat `defaults` (e.g. QWEN3_VL_IMAGE;
        the Qwen2-VL values when None).

        The pixel budget has two spellings: released checkpoints write top-level `min_pixels`/`max_pixels`;
        transformers >= 5 writes `size: {shortest_edge, longest_edge}` (pixel counts despite the names;
        some older files put `min_pixels`/`max_pixels` inside `size`). When both appear the top-level keys
        win, as in transformers' own loader. Unknown keys are ignored.
        """
        if not isinstance(d, dict):
            raise TypeError(f"preprocessor config must be a dict, got {type(d).__name__}")
        kw: dict[str, Any] = {k: d[k] for k in ("patch_size", "temporal_patch_size", "merge_size") if k in d}
        size = d.get("size")
        if size is not None:
            if not isinstance(size, dict):
                raise ValueError(f"preprocessor config 'size' must be a dict, got {size!r}")
            lo = size.get("shortest_edge", size.get("min_pixels"))
            hi = size.get("longest_edge", size.get("max_pixels"))
            if lo is None and hi is None:
                raise ValueError(
                    f"preprocessor config 'size' {size} has neither shortest_edge/longest_edge "
                    "nor min_pixels/max_pixels (a Qwen2-VL processor budgets pixels, not edges)"
                )
            kw.update({k: v for k, v in (("min_pixels", lo), ("max_pixels", hi)) if v is not None})
        kw.update({k: d[k] for k in ("min_pixels", "max_pixels") if d.get(k) is not None})
        for k in ("image_mean", "image_std"):
            if d.get(k) is not None:
                if not isinstance(d[k], (list, tuple)):
                    raise ValueError(f"preprocessor config {k!r} must be a list of 3 numbers, got {d[k]!r}")
                kw[k] = tuple(d[k])
        kw.update({k: d[k] for k in ("image_processor_type", "processor_class") if isinstance(d.get(k), str)})
        return dataclasses.replace(defaults or cls(), **kw)

    def to_preprocessor_config(self) -> dict:
        """The official preprocessor_config.json keys (both budget spellings, so old and new loaders agree:
        transformers 4.5x reads min/max_pixels, 5.x size; Qwen3-VL's own file carries only size)."""
        out = {
            "image_processor_type": self.image_processor_type,
            "do_resize": True,
            "resample": int(Image.Resampling.BICUBIC),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        if self.processor_class is not None:
            out["processor_class"] = self.processor_class
        return out


QWEN3_VL_IMAGE = ImageProcessorConfig(
    patch_size=16, min_pixels=QWEN3_VL_MIN_PIXELS, max_pixels=QWEN3_VL_MAX_PIXELS, image_mean=QWEN3_VL_MEAN,
    image_std=QWEN3_VL_STD, image_processor_type="Qwen2VLImageProcessorFast", processor_class="Qwen3VLProcessor",
)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: float = MIN_PIXELS, max_pixels: float = MAX_PIXELS
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Rounds with Python `round` (banker's rounding at .5). `max(factor, ...)` guards both the first rounding
    (qwen-vl-utils; matters for sides under factor/2, where transformers' version rounds to 0 and then
    takes the min_pixels branch) and the shrink branch (transformers; qwen-vl-utils could return 0 there).
    For sides >= factor/2 this equals transformers' smart_resize. Raises ValueError for ratio > 200.
    """
    if height < 1 or width < 1:
        raise ValueError(f"smart_resize: image size must be positive, got height={height} width={width}")
    if factor < 1 or not 0 < min_pixels <= max_pixels:
        raise ValueError(f"smart_resize: bad factor={factor} or min_pixels={min_pixels} > max_pixels={max_pixels}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"aspect ratio {ratio:.1f} (height {height} x width {width}) is over the limit of {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def describe_source(src: Any) -> str:
    """A short human name for an image source, used in every error message."""
    if isinstance(src, str) and src.startswith("data:"):
        return f"data URL {src[:40]!r}{'...' if len(src) > 40 else ''}"
    if isinstance(src, (str, os.PathLike)):
        return f"'{os.fspath(src)}'"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return f"<PIL {src.mode} image {src.width}x{src.height}>"
    if isinstance(src, np.ndarray):
        return f"<array {tuple(src.shape)} {src.dtype}>"
    return f"<{type(src).__name__}>"


def _decode_data_url(url: str, name: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ValueError(f"bad data URL {name}: no ',' between header and data")
    mime = header[len("data:") :].split(";")[0].strip().lower()
    if not header.endswith(";base64"):
        raise ValueError(f"bad data URL {name}: only ';base64' image data URLs are supported")
    if mime and not mime.startswith("image/"):
        raise ValueError(f"bad data URL {name}: media type {mime!r} is not an image/* type")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"bad data URL {name}: invalid base64 ({e})") from e


def _open(fp: Any, name: str) -> Image.Image:
    """Open and fully decode, so truncation surfaces here and not later inside resize."""
    try:
        with Image.open(fp) as img:
            img.load()
            return img
    except Image.UnidentifiedImageError as e:
        raise ValueError(f"{name} is not an image (PIL cannot identify the format)") from e
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is too large to decode safely: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{name} is a truncated or corrupt image ({e})") from e


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"image array {name} must be uint8 [H, W], [H, W, 3] or [H, W, 4]")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_rgb(img: Image.Image) -> Image.Image:
    # Transparent pixels are composited on white (qwen-vl-utils and transformers agree); a plain
    # convert("RGB") would expose whatever colour hides under alpha=0, often black.
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(src: ImageSource) -> Image.Image:
    """Load an image as RGB PIL.

    src: path (str / Path, optional "file://" prefix), raw file bytes, a "data:image/...;base64,..." URL,
    a PIL image, or a uint8 array [H, W(, 3|4)]. Raises FileNotFoundError for a missing file and
    ValueError (naming the source) for anything that is not a complete image of at least 2x2 pixels.
    """
    name = describe_source(src)
    if isinstance(src, Image.Image):
        try:
            src.load()  # a lazily opened, truncated file fails here
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ValueError(f"{name} is a truncated or corrupt image ({e})") from e
        img = src
    elif isinstance(src, np.ndarray):
        img = _from_array(src, name)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        img = _open(io.BytesIO(bytes(src)), name)
    elif isinstance(src, str) and src.startswith("data:"):
        img = _open(io.BytesIO(_decode_data_url(src, name)), name)
    elif isinstance(src, str) and src.startswith(("http://", "https://")):
        raise ValueError(f"{name}: remote URLs are not fetched by preprocessing; download the image first")
    elif isinstance(src, (str, os.PathLike)):
        path = Path(os.fspath(src).removeprefix("file://"))
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {name}")
        if path.is_dir():
            raise ValueError(f"{name} is a directory, not an image file")
        img = _open(path, name)
    else:
        raise TypeError(f"cannot load an image from {name}")
    if min(img.size) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{name} is {img.width}x{img.height} pixels; each side must be at least {MIN_IMAGE_SIDE} pixels"
        )
    return _to_rgb(img)


def target_size(
    height: int, width: int, factor: int, min_pixels: float, max_pixels: float, name: str
) -> tuple[int, int]:
    """smart_resize, with the source named in its error."""
    try:
        return smart_resize(height, width, factor, min_pixels, max_pixels)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL -> uint8 [1, 3, H, W]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [F, 3, H, W] -> float32 [F, 3, H, W] as (x / 255 - mean) / std per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return pixels.to(torch.float32).div_(255).sub_(m).div_(s)


def patchify(
    frames: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames [F, C, H, W] -> (pixel_values [gt*gh*gw, C*T*P*P], (gt, gh, gw)) in the official order.

    F is padded to a multiple of T by repeating the last frame (one image: the frame twice).
    Rows run over (t, h/m, w/m, m, m): the m*m patches of each merge block are contiguous, so the
    patch merger can view them as one row. Example, 56x56 image, P=14, m=2 (a 4x4 patch grid,
    (row, col) per patch): rows are (0,0) (0,1) (1,0) (1,1) | (0,2) (0,3) (1,2) (1,3) | (2,0) ...
    Each row is [C, T, P, P] flattened, the order Conv3d(kernel=(T, P, P)) weights expect.
    """
    f, c, h, w = frames.shape
    p, t, m = patch_size, temporal_patch_size, merge_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"patchify: frame size {h}x{w} is not a multiple of patch*merge = {p * m}")
    if f == 1:
        frames = frames.expand(t, c, h, w)  # a view; the reshape below makes the one copy
    elif f % t:
        frames = torch.cat([frames, frames[-1:].expand(t - f % t, c, h, w)])
    gt, gh, gw = frames.shape[0] // t, h // p, w // p
    x = frames.reshape(gt, t, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, bh, bw, mh, mw, C, T, P, P)
    return x.reshape(gt * gh * gw, c * t * p * p), (gt, gh, gw)


def process_image(
    image: ImageSource,
    cfg: ImageProcessorConfig,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One image -> (pixel_values [N, 3*T*P*P] float32, grid_thw (1, h, w) in patches); N = h*w.

    min_pixels / max_pixels override the config's budget for this image. LLM tokens = h*w / merge^2.
    """
    img = load_image(image)
    lo = cfg.min_pixels if min_pixels is None else min_pixels
    hi = cfg.max_pixels if max_pixels is None else max_pixels
    rh, rw = target_size(img.height, img.width, cfg.factor, lo, hi, describe_source(image))
    if (rw, rh) != img.size:
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)
    frames = normalize(pil_to_uint8(img), cfg.image_mean, cfg.image_std)
    return patchify(frames, cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size)


def process_image_fixed(
    image: ImageSource,
    size: int = 448,
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN,
    std: tuple[float, float, float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Qwen-VL v1: RGB, PIL BICUBIC squash to size x size (aspect NOT kept), /255, normalise -> [3, S, S]."""
    img = load_image(image).resize((size, size), Image.Resampling.BICUBIC)
    return normalize(pil_to_uint8(img), mean, std)[0]
