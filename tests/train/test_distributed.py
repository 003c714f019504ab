"""Data sharding, resumable batch streams, and a real 2-process gloo run (DDP, then FSDP) on mixed batches."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from qwenvl.train.config import OptimConfig, RunConfig, ScheduleConfig, StageConfig
from qwenvl.train.distributed import BatchStream, shard_order
from qwenvl.train.loop import DataSource
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


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from qwenvl.train.collate import collate
    from qwenvl.train.loop import train

    dist.init_process_group("gloo")  # one group for both runs (train() joins an existing group)

    results = {}
    for mode in ("ddp", "fsdp"):
        cfg = make_cfg(Path(root) / mode, stage=StageConfig(policy="stage2"),
                       optim=OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=1),
                       schedule=ScheduleConfig(max_steps=3, batch_size=2, grad_accum=2),
                       run=RunConfig(output_dir=str(Path(root) / mode / "run"), ckpt_every=2, progress=False,
                                     tensorboard=False, fsdp=mode == "fsdp", log_every=1))
        mc = model_cfg_of(cfg)
        data = DataSource(AlternatingExamples(mc), lambda exs, mc=mc: collate(exs, mc.bos_token_id, False, 128))
        s = train(cfg, data=data, val_data=fake_source(mc, n=8))
        results[mode] = {"losses": s["losses"], "val": s["val_loss"], "export": s["export"]}
    Path(root, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def test_two_process_gloo_ddp_and_fsdp_on_mixed_batches(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for mode in ("ddp", "fsdp"):
        assert r0[mode]["losses"] == r1[mode]["losses"] and len(r0[mode]["losses"]) == 3  # all-reduced, same
        assert r0[mode]["val"] == r1[mode]["val"] is not None
        assert r0[mode]["export"] and r1[mode]["export"] is None  # rank 0 alone writes
        ck = tmp_path / mode / "run" / "checkpoints" / "step_00000003"
        assert {p.name for p in ck.iterdir()} == {"state.pt", "rank0.pt", "rank1.pt", "meta.json"}
    # DDP and FSDP compute the same math
    for k, v in r0["ddp"]["losses"].items():
        assert abs(v - r0["fsdp"]["losses"][k]) < 1e-4
    from qwenvl.weights import load_model

    load_model(tmp_path / "fsdp" / "run" / "final")
