"""Data sharding, resumable batch streams, and a real 2-process gloo run (DDP, then FSDP) on mixed batches that
must equal a 1-process run on the same global batches."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from qwenvl.train.config import OptimConfig, RunConfig, ScheduleConfig, StageConfig
from qwenvl.train.distributed import BatchStream, shard_order
from qwenvl.train.loop import DataSource, build_model
from tests.train.test_loop import FakeExamples, fake_source, make_cfg, model_cfg_of, one_thread  # noqa: F401


def test_shard_order_partitions_each_epoch():
    shards = [shard_order(11, seed=3, epoch=2, rank=r, world=3) for r in range(3)]
    assert all(len(s) == 11 // 3 for s in shards)
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(11))
    assert shards[0] == shard_order(11, 3, 2, 0, 3) and shards[0] != shard_order(11, 3, 3, 0, 3)
    assert shard_order(4, 0, 0, 1, 2, shuffle=False) == [1, 3]


class Numbers:
    """A plain iterable (no len / getitem), optionally with its own position state."""

    def __init__(self, n: int, stateful: bool) -> None:
        self.n, self.pos = n, 0
        if stateful:
            self.state_dict = lambda: {"pos": self.pos}
            self.load_state_dict = lambda s: setattr(self, "pos", s["pos"])

    def __iter__(self):
        while self.pos < self.n:
            self.pos += 1
            yield self.pos - 1
        self.pos = 0


@pytest.mark.parametrize("kind", ["map", "iterable", "iterable_stateful"])
def test_batch_stream_resumes_exactly(kind):
    def make():
        data = list(range(10)) if kind == "map" else Numbers(10, kind == "iterable_stateful")
        return BatchStream(data, list, batch_size=3, seed=1, rank=1, world=2)

    a = make()
    first = [next(a) for _ in range(3)]
    state = a.state_dict()
    rest = [next(a) for _ in range(5)]
    b = make()
    b.load_state_dict(state)
    assert [next(b) for _ in range(5)] == rest
    if kind != "map":  # round-robin: rank 1 of 2 sees the odd positions of the stream
        assert first[0] == [1, 3, 5]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        BatchStream(list(range(3)), list, batch_size=2, world=2)


class AlternatingExamples:
    """Endless iterable: even positions text-only, odd positions one or two images. Dealt round-robin to
    2 ranks, rank 0 sees ONLY text-only batches and rank 1 only image batches: the pain-point-14 case."""

    def __init__(self, model_cfg) -> None:
        self.base = FakeExamples(model_cfg, n=16, kinds=("text", "image", "text", "multi"))

    def __iter__(self):
        i = 0
        while True:
            yield self.base[i % 16]
            i += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS = 3


def _cfg(root: Path, mode: str, world: int):
    """The same run for 1 or 2 processes: 8 examples per optimizer step in both (2 ranks x 2 accum x 2 rows,
    or 1 x 2 accum x 4 rows). The iterable is dealt round-robin, so rank 0 gets examples 0 2 | 4 6 and rank 1
    1 3 | 5 7 where the single process takes 0-3 | 4-7: each step sums over the same 8 examples."""
    return make_cfg(root / mode, stage=StageConfig(policy="stage2"),
                    optim=OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=1),
                    schedule=ScheduleConfig(max_steps=STEPS, batch_size=4 // world, grad_accum=2),
                    run=RunConfig(output_dir=str(root / mode / "run"), ckpt_every=2, progress=False,
                                  tensorboard=False, fsdp=mode == "fsdp", log_every=1, eval_batches=1))


def _train(root: Path, mode: str, world: int) -> dict:
    from qwenvl.train.collate import collate
    from qwenvl.train.loop import train

    cfg = _cfg(root, mode, world)
    mc = model_cfg_of(cfg)
    data = DataSource(AlternatingExamples(mc), lambda exs, mc=mc: collate(exs, mc.bos_token_id, False, 128))
    # val: the first eval batch of each rank together is examples 0-3, as the single process's one batch of 4
    s = train(cfg, data=data, val_data=fake_source(mc, n=8))
    return {"losses": s["losses"], "val": s["val_loss"], "export": s["export"]}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")  # one group for both runs (train() joins an existing group)
    results = {mode: _train(Path(root), mode, world) for mode in ("ddp", "fsdp")}
    Path(root, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _grad_norms(run: Path) -> list[float]:
    return [float(r["grad_norm"]) for r in csv.DictReader(open(run / "metrics.csv")) if r["split"] == "train"]


def test_two_process_gloo_ddp_and_fsdp_equal_one_process(tmp_path):
    """DDP and FSDP on 2 gloo processes == 1 process on the same global batches, after STEPS AdamW steps.

    fp32 throughout (make_cfg pins it; bf16 autocast would round each grouping differently). The runs differ
    only in how the 8 examples of a step are grouped into micro-batches and ranks, i.e. in the order of fp32
    sums (~1e-7 relative each); AdamW divides by sqrt(v), so a gradient that is all rounding noise can still
    move a weight by up to lr * noise / eps, which stays under 1e-5 here (lr 2e-3, 3 steps, eps 1e-6).
    Parameters alone would miss a wrong averaging that rescales every gradient (AdamW's update hardly
    depends on the gradient's scale), so the pre-clip gradient norm of every step is compared as well."""
    from qwenvl.weights import load_model

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _train(tmp_path, "single", world=1)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    ref = load_model(tmp_path / "single" / "run" / "final").state_dict()
    ref_norms = _grad_norms(tmp_path / "single" / "run")
    assert len(ref_norms) == STEPS
    for mode in ("ddp", "fsdp"):
        assert r0[mode]["export"] and r1[mode]["export"] is None  # rank 0 alone writes
        ck = tmp_path / mode / "run" / "checkpoints" / f"step_{STEPS:08d}"
        assert {p.name for p in ck.iterdir()} == {"state.pt", "rank0.pt", "rank1.pt", "meta.json"}
        got = load_model(tmp_path / mode / "run" / "final").state_dict()
        assert got.keys() == ref.keys()
        diffs = {k: float((got[k] - ref[k]).abs().max()) for k in ref}
        worst = max(diffs, key=diffs.get)
        assert diffs[worst] <= 1e-5, (mode, worst, diffs[worst])
        norms = _grad_norms(tmp_path / mode / "run")
        assert norms == pytest.approx(ref_norms, rel=1e-4), (mode, norms, ref_norms)
        for step, loss in single["losses"].items():
            assert r0[mode]["losses"][str(step)] == pytest.approx(loss, rel=1e-5, abs=1e-6), (mode, step)
        assert r0[mode]["val"] == pytest.approx(single["val"], rel=1e-5)
    # the weights did move, by far more than the tolerance (equal untouched weights would prove nothing)
    init = build_model(_cfg(tmp_path, "single", world=1)).state_dict()
    assert max(float((ref[k] - init[k]).abs().max()) for k in ref) > 100 * 1e-5
