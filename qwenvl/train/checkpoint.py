"""Training checkpoints (resume state) and the final export, both written atomically.

    OUTPUT_DIR/checkpoints/step_00000120/
        state.pt      trainable parameters (fp32, by QwenVLModel name), optimizer, scheduler, step
        rank0.pt ...  per rank: RNG states (python, numpy, torch) and the data-stream position
        meta.json     step, config hash, world size, elapsed seconds, precision (written last)
    OUTPUT_DIR/final/  config.json + model.safetensors (weights.save_model, HF layout) + tokenizer files

Atomicity: a checkpoint is assembled in `checkpoints/.tmp-step_N/`, each file fsynced, then the folder
is renamed into place with os.replace (one atomic rename on POSIX). A process killed mid-write leaves a
`.tmp-*` folder that resume ignores and the next run deletes; the last complete checkpoint is never
touched until a newer one is in place. Only the newest `keep_last` are kept.
Frozen parameters are not saved: a resumed run rebuilds them from model.init (or the seeded
from-scratch init) and checks their fingerprint against the one saved here.
Must not: decide when to checkpoint (loop.py) or gather sharded state (distributed.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qwenvl.train.distributed import DistInfo, barrier

CKPT_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    """Python, numpy and torch RNG states, as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def frozen_fingerprint(model: nn.Module) -> float:
    """Sum of all frozen parameter values (float64): catches a resume onto different frozen weights."""
    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if not p.requires_grad and not hasattr(p, "device_mesh"):
            total += p.detach().double().sum()
    return float(total)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync_file(path)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass


def _save(obj: object, path: Path) -> None:
    torch.save(obj, path)
    _fsync_file(path)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts once its meta.json exists)."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "meta.json").is_file()]
    return sorted(done, key=lambda p: p.name)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def clean_stale(output_dir: str | Path) -> None:
    """Delete half-written `.tmp-*` folders left by a killed run (rank 0, at start)."""
    root = Path(output_dir) / CKPT_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
    for p in Path(output_dir).glob(TMP_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(output_dir: str | Path, step: int, info: DistInfo, *, state: dict | None, rank_state: dict,
                    meta: dict, keep_last: int) -> Path:
    """Write one checkpoint; every rank calls this (state is only needed on rank 0).

    state: {"model", "optimizer", "scheduler", ...}; rank_state: this rank's {"rng", "data"}.
    """
    root = Path(output_dir) / CKPT_DIR
    final = root / step_name(step)
    tmp = root / (TMP_PREFIX + step_name(step))
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    _save(rank_state, tmp / f"rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        _save(state, tmp / "state.pt")
        meta = dict(meta, step=step, world=info.world, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _fsync_file(tmp / "meta.json")
        _fsync_dir(tmp)
        old = None
        if final.exists():  # the same step written again (a rerun from an older checkpoint)
            old = root / (TMP_PREFIX + "old-" + step_name(step))
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    barrier(info)
    return final


def load_checkpoint(path: str | Path, info: DistInfo) -> tuple[dict, dict, dict]:
    """(state, this rank's rank_state, meta) of a complete checkpoint folder."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta["world"] != info.world:
        raise ValueError(f"checkpoint {path} was written by {meta['world']} process(es), this run has "
                         f"{info.world}: the data shards would differ, so resume with the same process count")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    rank_state = torch.load(path / f"rank{info.rank}.pt", map_location="cpu", weights_only=True)
    return state, rank_state, meta


# ----------------------------------------------------------------------------------------------
# final export

_NOT_COPIED = (".safetensors", ".bin", ".pt", ".tmp")
_NOT_COPIED_NAMES = ("config.json", "aux_dense.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")


def export_model(model: nn.Module, output_dir: str | Path, dtype: torch.dtype | None = None,
                 copy_from: str | Path | None = None, name: str = "final") -> Path:
    """weights.save_model into OUTPUT_DIR/<name> atomically (temp folder + os.replace), plus the
    tokenizer / processor files of `copy_from` (the init checkpoint or data.tokenizer folder), so the
    export loads with qwenvl.load. Rank 0 only."""
    from qwenvl.weights import save_model

    out = Path(output_dir)
    dest, tmp = out / name, out / (TMP_PREFIX + name)
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, dtype=dtype)
    if copy_from and Path(copy_from).is_dir():
        for f in Path(copy_from).iterdir():
            if f.is_file() and not f.name.endswith(_NOT_COPIED) and f.name not in _NOT_COPIED_NAMES:
                shutil.copy2(f, tmp / f.name)
    for f in tmp.iterdir():
        _fsync_file(f)
    old = None
    if dest.exists():
        old = out / (TMP_PREFIX + "old-" + name)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    _fsync_dir(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest
