"""Batch captioning: image files -> JSONL, batched through `Pipeline.generate_batch`, resumable.

Output: one JSON line per file, {"file", "caption"} or {"file", "error"} (an unreadable image). Lines are
appended and flushed after each batch, so a kill loses at most the batch in flight; a rerun skips every
file already in the output. Under torchrun (WORLD_SIZE / RANK set, WORLD_SIZE > 1) rank r takes
files[r::world] and writes `OUT.rank{r}`; concatenate the shards afterwards.
Must not: parse argv or load models.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwenvl.processing.image import load_image

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_PROMPT = "Describe the image."


def list_images(source: str) -> list[Path]:
    """Image files under a directory (recursive) or matching a glob, sorted. Raises FileNotFoundError if none."""
    p = Path(source)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    else:
        files = [Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file()]
    if not files:
        raise FileNotFoundError(f"no image files in {source}")
    return sorted(files)


def shard(files: list[Path], out: Path, env: dict[str, str] | None = None) -> tuple[list[Path], Path]:
    """(this rank's files, its output path): files[rank::world] and OUT.rank{r} under torchrun, else all."""
    env = os.environ if env is None else env
    world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    if world <= 1:
        return files, out
    return files[rank::world], out.with_name(f"{out.name}.rank{rank}")


def done_files(out: Path) -> set[str]:
    """Files already recorded in `out` (a torn last line from a kill is ignored and redone)."""
    if not out.exists():
        return set()
    done = set()
    for line in out.read_text().splitlines():
        try:
            done.add(json.loads(line)["file"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def caption_files(pipe: Any, files: list[Path], out: Path, *, prompt: str = DEFAULT_PROMPT, batch_size: int = 8,
                  progress: bool = True, on_batch: Callable[[int], None] | None = None, **gen_kw: Any) -> dict:
    """Caption `files` not yet in `out`, appending a line per file. Returns counts {done, skipped, errors}."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    seen = done_files(out)
    todo = [f for f in files if str(f) not in seen]
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"done": 0, "skipped": len(files) - len(todo), "errors": 0}
    bar = tqdm(total=len(todo), disable=not progress, unit="img")
    with out.open("a", encoding="utf-8") as fh:
        if out.stat().st_size and not out.read_bytes().endswith(b"\n"):
            fh.write("\n")  # a kill mid-write left a torn line: start ours on a fresh one
        for i in range(0, len(todo), batch_size):
            lines, good = [], []
            for f in todo[i:i + batch_size]:
                try:
                    load_image(f)  # a corrupt file becomes an error line, not a failed batch
                    good.append(f)
                except (ValueError, FileNotFoundError, OSError) as e:
                    lines.append({"file": str(f), "error": str(e)})
            batch = _caption_batch(pipe, good, prompt, gen_kw)
            lines += batch
            good = [f for f, x in zip(good, batch, strict=True) if "caption" in x]
            fh.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
            fh.flush()
            os.fsync(fh.fileno())
            counts["done"] += len(good)
            counts["errors"] += len(lines) - len(good)
            bar.update(len(lines))
            if on_batch is not None:
                on_batch(i // batch_size)
    bar.close()
    return counts


def _caption_batch(pipe: Any, files: list[Path], prompt: str, gen_kw: dict) -> list[dict]:
    """One line per file, in order. If the batch is refused (e.g. one image's aspect ratio is over the
    processor's limit), retry file by file so only the bad one becomes an error line."""
    def conv(f: Path) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image", "image": str(f)}, {"type": "text", "text": prompt}]}]

    if not files:
        return []
    try:
        return [{"file": str(f), "caption": r.text}
                for f, r in zip(files, pipe.generate_batch([conv(f) for f in files], **gen_kw), strict=True)]
    except ValueError as e:
        if len(files) == 1:
            return [{"file": str(files[0]), "error": str(e)}]
    lines = []
    for f in files:
        try:
            lines.append({"file": str(f), "caption": pipe.generate_batch([conv(f)], **gen_kw)[0].text})
        except ValueError as e:
            lines.append({"file": str(f), "error": str(e)})
    return lines
