"""Checkpoint / resume: a killed run resumes to exactly the losses of an uninterrupted one (acceptance test)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from qwenvl.train import checkpoint as ckpt
from qwenvl.train.config import LoraConfig, OptimConfig, RunConfig, ScheduleConfig, StageConfig
from qwenvl.train.loop import DataSource, train
from tests.train.test_loop import fake_source, make_cfg, model_cfg_of, one_thread  # noqa: F401 (autouse)


class Killed(RuntimeError):
    pass


def killing(src: DataSource, at_batch: int) -> DataSource:
    """The same data, but fetching micro-batch number `at_batch` (1-based) raises: a crash mid-run."""
    calls = {"n": 0}

    def collate(exs):
        calls["n"] += 1
        if calls["n"] == at_batch:
            raise Killed(f"killed at batch {at_batch}")
        return src.collate(exs)

    return DataSource(src.dataset, collate)


def _cfg(tmp_path, name, **over):
    run = dict(output_dir=str(tmp_path / name), ckpt_every=3, keep_last=2, log_every=1, progress=False,
               tensorboard=False, export=False)
    run.update(over.pop("run", {}))
    sections = dict(stage=StageConfig(policy="stage2"),
                    optim=OptimConfig(lr=2e-3, min_lr=1e-4, warmup_steps=2, vit_layer_decay=0.9),
                    schedule=ScheduleConfig(max_steps=8, batch_size=2, grad_accum=2),
                    run=RunConfig(**run))
    sections.update(over)
    return make_cfg(tmp_path, **sections)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_dropout"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, lora):
    """fp32, mixed image / two-image / text batches, grad accumulation, ViT layer decay, (LoRA dropout: RNG)."""
    extra = {"lora": LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1), "stage": StageConfig()} if lora else {}
    ref_cfg = _cfg(tmp_path, "ref", **extra)
    src = fake_source(model_cfg_of(ref_cfg), n=10)
    ref = train(ref_cfg, data=src)["losses"]
    assert len(ref) == 8

    cfg = _cfg(tmp_path, "killed", **extra)
    with pytest.raises(Killed):  # step 7 fetches micro-batches 13 and 14: dies mid-step after the step-6 checkpoint
        train(cfg, data=killing(src, 14))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "killed")] == ["step_00000003", "step_00000006"]
    resumed = train(cfg, data=src, resume=True)
    assert resumed["resumed_from"].endswith("step_00000006")
    assert sorted(resumed["losses"]) == [7, 8]
    for step in (7, 8):
        assert abs(resumed["losses"][step] - ref[step]) <= 1e-6, (step, resumed["losses"][step], ref[step])
    # the CSV holds each step once: rows after the checkpoint were replaced by the resumed run
    rows = [r for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:] if ",train," in r]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 9))


def test_killed_checkpoint_write_keeps_the_last_complete_one(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "run", schedule=ScheduleConfig(max_steps=7, batch_size=2))
    src = fake_source(model_cfg_of(cfg), n=10)
    real_save = ckpt._save

    def dying_save(obj, path):
        if path.name == "state.pt" and "step_00000006" in str(path):
            path.write_bytes(b"partial")  # half a file, then the process dies
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data=src)
    out = tmp_path / "run"
    assert ckpt.latest_checkpoint(out).name == "step_00000003"
    assert (out / "checkpoints" / ".tmp-step_00000006").exists()  # the torn write, ignored
    monkeypatch.setattr(ckpt, "_save", real_save)
    s = train(cfg, data=src, resume=True)
    assert s["resumed_from"].endswith("step_00000003") and s["step"] == 7
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000006", "step_00000007"]  # keep_last 2, the stale temp folder removed


def test_resume_refuses_a_changed_recipe_but_allows_bookkeeping(tmp_path):
    cfg = _cfg(tmp_path, "run", schedule=ScheduleConfig(max_steps=3, batch_size=2))
    src = fake_source(model_cfg_of(cfg), n=6)
    train(cfg, data=src)
    changed = cfg.replace(optim=OptimConfig(lr=1e-2, min_lr=1e-4))
    with pytest.raises(ValueError, match="different recipe"):
        train(changed, data=src, resume=True)
    longer_logs = cfg.replace(run=RunConfig(**{**cfg.run.__dict__, "log_every": 5}))
    assert train(longer_logs, data=src, resume=True)["step"] == 3


def test_checkpoint_contents(tmp_path):
    cfg = _cfg(tmp_path, "run", stage=StageConfig(policy="stage1"), schedule=ScheduleConfig(max_steps=3, batch_size=2))
    train(cfg, data=fake_source(model_cfg_of(cfg), n=6))
    path = ckpt.latest_checkpoint(tmp_path / "run")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 3 and meta["world"] == 1 and len(meta["config_hash"]) == 16
    state = torch.load(path / "state.pt", weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "step"}
    params = {k for k in state["model"] if not k.endswith("pos_embed")}  # + the resampler's persistent buffer
    assert params and all(k.startswith("visual.") for k in params)  # stage 1: only the tower trains
    rank = torch.load(path / "rank0.pt", weights_only=True)
    assert set(rank) == {"rng", "data"} and set(rank["rng"]) == {"python", "numpy", "torch"}


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    ckpt.set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == a
