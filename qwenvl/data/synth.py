"""`qwenvl synth`: write a seeded synthetic dataset (PNGs + train/val/test JSONL + manifest).

    manifest = generate("data/synth", n_per_task=1000, seed=0, workers=2)

Layout: out_dir/{train,val,test}.jsonl, out_dir/images/{split}/{task}/{id}[-k|-fk].png, out_dir/manifest.json.
Sample `i` of (task, split) uses only rng(seed, task, split, i) and language langs[i % len(langs)], so
chunks can run in any process, in any order, and an interrupted run resumes (`resume=True`) from
the chunk files kept in out_dir/.parts. Same arguments -> byte-identical files.
Must not: touch anything outside out_dir, or delete a folder that does not hold a synth dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from qwenvl.config import QWEN_VL
from qwenvl.data.render import font_fingerprint, resolve_fonts, save_png
from qwenvl.data.tasks import SPLITS, TASKS, Ctx, sample_rng
from qwenvl.processing.grounding import FAMILIES

CHUNK = 64  # samples per job / resume unit
_PARTS = ".parts"


def version_hash() -> str:
    """sha256[:12] of the generator's source (qwenvl/data/**/*.py): changes whenever outputs may change."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the output bytes (also written to the manifest)."""

    seed: int
    fractions: tuple[float, float, float]
    size: tuple[int, int]
    family: str
    langs: tuple[str, ...]
    knobs: dict[str, dict[str, Any]]
    fonts: tuple[str, ...]


def make_sample(cfg: SynthConfig, task: str, split: str, index: int, lang: str | None = None,
                ) -> tuple[dict, list[tuple[str, Image.Image]]]:
    """One record and its (relative path, image) pairs, without writing anything."""
    rid = f"{task}-{split}-{index:06d}"
    lang = lang or cfg.langs[index % len(cfg.langs)]
    ctx = Ctx(sample_rng(cfg.seed, task, split, index), task, split, index, lang, cfg.size, cfg.family,
              cfg.fractions, cfg.knobs[task], list(cfg.fonts), rid)
    sample = TASKS[task].build(ctx)
    meta = {**sample.meta, "image_size": list(cfg.size), "family": cfg.family, "difficulty": cfg.knobs[task],
            "content_keys": list(dict.fromkeys(ctx.keys))}
    if ctx.input_size() is not None:  # qwen2_5_vl boxes are pixels of this resized input
        meta["input_size"] = list(ctx.input_size())
    return {"id": rid, "task": task, "lang": lang, "messages": sample.messages, "meta": meta}, ctx.images


def _run_job(cfg: SynthConfig, out: str, task: str, split: str, start: int, stop: int) -> dict[str, int]:
    """Build samples start..stop-1, save their PNGs and write the chunk's JSONL atomically."""
    lines, counts = [], {lang: 0 for lang in cfg.langs}
    for i in range(start, stop):
        rec, images = make_sample(cfg, task, split, i)
        for rel, img in images:
            save_png(img, Path(out) / rel)
        lines.append(json.dumps(rec, ensure_ascii=False))
        counts[rec["lang"]] += 1
    part = _part_path(out, task, split, start)
    tmp = part.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, part)
    return counts


def _part_path(out: str | Path, task: str, split: str, start: int) -> Path:
    return Path(out) / _PARTS / f"{split}.{task}.{start:08d}.jsonl"


def _split_counts(n: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    val, test = round(n * fractions[1]), round(n * fractions[2])
    return {"train": n - val - test, "val": val, "test": test}


def _fractions(splits: Sequence[float] | dict[str, float]) -> tuple[float, float, float]:
    fr = tuple(splits[s] for s in SPLITS) if isinstance(splits, dict) else tuple(float(f) for f in splits)
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions (train, val, test) summing to 1, got {splits!r}")
    return fr  # type: ignore[return-value]


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    w, h = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if w < 64 or h < 64:
        raise ValueError(f"image_size must be at least 64x64, got {image_size!r}")
    return int(w), int(h)


def resolve_config(seed: int = 0, splits: Sequence[float] | dict[str, float] = (0.8, 0.1, 0.1),
                   image_size: int | Sequence[int] = 224, tasks: Sequence[str] | None = None,
                   langs: Sequence[str] = ("en", "zh"), family: str = QWEN_VL,
                   difficulty: str | dict[str, Any] | None = None, fonts: Sequence[str] | None = None) -> SynthConfig:
    """Validate the generator arguments into a SynthConfig. difficulty: a level for every task
    ("easy" | "medium" | "hard") or {task: level | {"level": ..., knob: value}}."""
    tasks = list(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; available: {list(TASKS)}")
    if not langs or any(lang not in ("en", "zh") for lang in langs):
        raise ValueError(f"langs must be a non-empty subset of ('en', 'zh'), got {langs!r}")
    if family not in FAMILIES:
        raise ValueError(f"unknown grounding family {family!r}; expected one of {FAMILIES}")
    if isinstance(difficulty, dict):
        extra = sorted(set(difficulty) - set(tasks))
        if extra:
            raise ValueError(f"difficulty names tasks that are not generated: {extra}")
        knobs = {t: TASKS[t].knobs(difficulty.get(t)) for t in tasks}
    else:
        knobs = {t: TASKS[t].knobs(difficulty) for t in tasks}
    return SynthConfig(int(seed), _fractions(splits), _size(image_size), family, tuple(langs), knobs,
                       tuple(resolve_fonts(list(fonts) if fonts else None)))


def generate(out_dir: str | os.PathLike, n_per_task: int | dict[str, int] = 100, seed: int = 0,
             splits: Sequence[float] | dict[str, float] = (0.8, 0.1, 0.1), image_size: int | Sequence[int] = 224,
             tasks: Sequence[str] | None = None, langs: Sequence[str] = ("en", "zh"), workers: int = 1,
             family: str = QWEN_VL, difficulty: str | dict[str, Any] | None = None,
             fonts: Sequence[str] | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Write the dataset and return its manifest.

    n_per_task: samples per task over all splits and languages (an int for every task, or {task: n},
    which also picks the tasks). splits: (train, val, test) fractions. Languages alternate by index.
    resume: keep finished chunks of an interrupted run with the same arguments.
    """
    if isinstance(n_per_task, dict):
        tasks = list(tasks or n_per_task)
        missing = [t for t in tasks if t not in n_per_task]
        if missing:
            raise ValueError(f"n_per_task has no count for tasks {missing}")
    cfg = resolve_config(seed, splits, image_size, tasks, langs, family, difficulty, fonts)
    counts_per_task = {t: (n_per_task[t] if isinstance(n_per_task, dict) else int(n_per_task)) for t in cfg.knobs}
    out = Path(out_dir)
    _prepare(out, cfg, counts_per_task, resume)
    jobs = [(t, s, a, min(a + CHUNK, n)) for t, n_t in counts_per_task.items()
            for s, n in _split_counts(n_t, cfg.fractions).items() for a in range(0, n, CHUNK)]
    for t, s, _, _ in jobs:
        (out / "images" / s / t).mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not _part_path(out, j[0], j[1], j[2]).exists()]
    _run_all(cfg, out, todo, workers, progress)
    return _finish(out, cfg, counts_per_task, jobs)


def _config_json(cfg: SynthConfig, counts: dict[str, int]) -> str:
    return json.dumps({"config": asdict(cfg), "n_per_task": counts, "version": version_hash()}, sort_keys=True)


def _prepare(out: Path, cfg: SynthConfig, counts: dict[str, int], resume: bool) -> None:
    """Check out_dir is ours, then clear it (fresh run) or check the run matches (resume)."""
    parts = out / _PARTS
    ours = (out / "manifest.json").exists() or parts.exists()
    if out.exists() and any(out.iterdir()) and not ours:
        raise FileExistsError(f"{out} is not empty and holds no synth dataset; pick an empty or new folder")
    stamp = _config_json(cfg, counts)
    if resume and (parts / "config.json").exists():
        if (parts / "config.json").read_text() != stamp:
            raise ValueError(f"cannot resume {out}: it was started with other arguments or generator version")
    else:
        for name in ("images", _PARTS):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (*(f"{s}.jsonl" for s in SPLITS), "manifest.json"):
            (out / name).unlink(missing_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "config.json").write_text(stamp)


def _run_all(cfg: SynthConfig, out: Path, todo: list, workers: int, progress: bool) -> None:
    bar = _bar(sum(b - a for _, _, a, b in todo), progress)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            _run_job(cfg, str(out), *job)
            bar.update(job[3] - job[2])
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            futures = {pool.submit(_run_job, cfg, str(out), *job): job for job in todo}
            for fut in as_completed(futures):
                fut.result()
                job = futures[fut]
                bar.update(job[3] - job[2])
    bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the train extra; generation works without it
        return _NoBar()
    return tqdm(total=total, unit="sample", desc="synth", smoothing=0.1)


def _finish(out: Path, cfg: SynthConfig, counts_per_task: dict[str, int], jobs: list) -> dict:
    """Concatenate chunk files per split in canonical order, write the manifest, drop .parts."""
    counts: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}
    files = {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        h, n = hashlib.sha256(), 0
        with open(path, "wb") as f:
            for t, s, a, _ in jobs:
                if s != split:
                    continue
                data = _part_path(out, t, s, a).read_bytes()
                f.write(data)
                h.update(data)
                for line in data.splitlines():
                    lang = json.loads(line)["lang"]
                    per = counts[split].setdefault(t, {})
                    per[lang] = per.get(lang, 0) + 1
                    n += 1
        files[split] = {"path": path.name, "records": n, "sha256": h.hexdigest()}
    manifest = {
        "generator": "qwenvl-synth", "version": version_hash(), "seed": cfg.seed,
        "splits": dict(zip(SPLITS, cfg.fractions, strict=True)), "image_size": list(cfg.size), "family": cfg.family,
        "langs": list(cfg.langs), "n_per_task": counts_per_task, "difficulty": cfg.knobs,
        "fonts": font_fingerprint(list(cfg.fonts)), "pillow": Image.__version__, "counts": counts, "files": files,
        "split_rule": "sha256(content key) cut at the split fractions; a key never spans two splits",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.rmtree(out / _PARTS)
    return manifest


# ------------------------------------------------------------------------- CLI


def _parse_n(text: str) -> int | dict[str, int]:
    if "=" not in text:
        return int(text)
    return {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(","))}


def _parse_difficulty(text: str | None) -> str | dict | None:
    """'hard', or ';'-separated task=level and task.knob=JSON items: 'ocr=easy;count.count=[1,3]'."""
    if text is None or "=" not in text:
        return text
    spec: dict[str, dict] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        lhs, rhs = item.split("=", 1)
        task, _, knob = lhs.strip().partition(".")
        entry = spec.setdefault(task, {})
        if knob:
            entry[knob] = json.loads(rhs)
        else:
            entry["level"] = rhs.strip()
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qwenvl synth", description="Generate the synthetic image+text dataset.")
    p.add_argument("out_dir")
    p.add_argument("--n", default="100", help="samples per task, or task=n,task=n (picks the tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--image-size", default="224", help="N or WxH")
    p.add_argument("--tasks", default=None, help=f"comma list; default all: {','.join(TASKS)}")
    p.add_argument("--langs", default="en,zh")
    p.add_argument("--family", default="qwen_vl", choices=FAMILIES, help="how boxes are written in answers")
    p.add_argument("--difficulty", default=None,
                   help='easy|medium|hard, or per task: "ocr=hard;count.count=[1,3]" (knob values are JSON)')
    p.add_argument("--fonts", default=None, help="comma list of font names; default all found offline")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run with the same arguments")
    p.add_argument("--no-progress", action="store_true")
    return p


def main_synth(argv: Sequence[str] | None = None) -> int:
    """Entry point for `qwenvl synth ...`; returns the exit code, errors as one line on stderr."""
    args = build_parser().parse_args(argv)
    size = args.image_size.lower().split("x")
    try:
        manifest = generate(
            args.out_dir, _parse_n(args.n), seed=args.seed, splits=[float(f) for f in args.splits.split(",")],
            image_size=int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1])),
            tasks=args.tasks.split(",") if args.tasks else None, langs=args.langs.split(","),
            workers=args.workers, family=args.family, difficulty=_parse_difficulty(args.difficulty),
            fonts=args.fonts.split(",") if args.fonts else None, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileExistsError, json.JSONDecodeError) as e:
        print(f"qwenvl synth: {e}", file=sys.stderr)
        return 2
    files = manifest["files"]
    print(f"wrote {args.out_dir}: " + ", ".join(f"{s} {files[s]['records']}" for s in SPLITS)
          + f" (generator {manifest['version']})")
    return 0
