"""Multi-process training on CPU: process group from torchrun's env, DDP / FSDP wrapping, data sharding.

    torchrun --nproc_per_node 2 -m qwenvl train recipes/stage1_pretrain.toml

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `init_distributed` joins the
gloo group when WORLD_SIZE > 1 and is a no-op otherwise. Rank 0 alone logs, plots, checkpoints and
exports; every rank writes its own RNG / data-position file into the same checkpoint (checkpoint.py).

DDP needs every trainable parameter to receive a gradient on every rank on every step, or the
ranks wait for each other forever (pain point 14: a text-only batch on one rank, an image batch on
another). loop.LossModule guarantees it with a zero-weighted dummy vision pass, so DDP runs with
find_unused_parameters=False. (Without the dummy pass a 2-process gloo run aborts on the first
mixed step with "Received data size doesn't match expected size"; NCCL/DeepSpeed can hang instead.)

FSDP (`run.fsdp = true`): torch.distributed.fsdp.fully_shard per decoder layer, then on the root (the
LossModule, whose forward runs the whole model). The vision tower stays in the root unit on purpose:
how many tower passes a step makes varies by batch (images, videos, the dummy pass), and FSDP needs
the same sequence of all-gathers on every rank, which the decoder layers (one pass each) give.
Model and optimizer state are gathered to full tensors for checkpoints through
torch.distributed.checkpoint.state_dict, which also serves the single-process and DDP cases, so
there is one code path.
Must not: read recipes or decide what trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed() -> tuple[DistInfo, bool]:
    """(this process's rank info, whether this call created the process group)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), False
    dist.init_process_group("gloo")  # env:// from torchrun
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))), True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) across ranks; the tensor unchanged in a single process."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# wrapping


def wrap(module: nn.Module, inner_model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    """DDP or FSDP around `module` (whose forward is the whole loss); `inner_model` is the QwenVLModel."""
    if not info.enabled:
        return module
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (info.world,))
        for layer in inner_model.model.layers:  # not the ViT blocks: see the module docstring
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # buffers (RoPE tables, the resampler's sin-cos table) are identical on every rank: no per-step sync
    new_api = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    kw = {"forward_sync_buffers": False} if new_api else {"broadcast_buffers": False}
    return DistributedDataParallel(module, find_unused_parameters=False, **kw)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(module: nn.Module, skip: bool):
    """DDP's no_sync() while accumulating (skip the all-reduce until the last micro-batch)."""
    import contextlib

    if skip and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _strip(d: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in d.items()}


def gather_state(module: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "model.") -> tuple[dict, dict]:
    """Full (unsharded) trainable model state and optimizer state, keyed by parameter name.

    Collective under FSDP: every rank must call it; with several processes only rank 0 gets the
    tensors (the others get empty dicts). `prefix` (the LossModule's attribute) is removed, so keys
    are QwenVLModel names (`visual.conv1.weight`, `model.layers.0...lora_A.default.weight`).
    """
    module = unwrap(module)
    msd = get_model_state_dict(module, options=_FULL)
    osd = get_optimizer_state_dict(module, optimizer, options=_FULL)
    if "state" not in osd:  # not rank 0
        return {}, {}
    osd = {"state": _strip(osd["state"], prefix),
           "param_groups": [dict(g, params=[p.removeprefix(prefix) for p in g["params"]])
                            for g in osd["param_groups"]]}
    return _strip(msd, prefix), osd


def load_state(module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
               prefix: str = "model.") -> None:
    """Inverse of gather_state (every rank loads the same full state; FSDP re-shards it)."""
    module = unwrap(module)
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers()}  # persistent buffers travel with the trainable state
    msd = {prefix + k: v for k, v in model_state.items()}
    missing, unexpected = sorted(names - set(msd)), sorted(set(msd) - names - buffers)
    if missing or unexpected:
        raise ValueError(f"checkpoint trainable parameters do not match this run: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]} (different stage policy or LoRA setting?)")
    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(module, msd, options=opts)
    osd = {"state": {prefix + k: v for k, v in optim_state["state"].items()},
           "param_groups": [dict(g, params=[prefix + p for p in g["params"]]) for g in optim_state["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, osd, options=StateDictOptions(full_state_dict=True))


# ----------------------------------------------------------------------------------------------
# data order


def shard_order(n: int, seed: int, epoch: int, rank: int, world: int, shuffle: bool = True) -> list[int]:
    """This rank's example indices for one epoch: a seeded permutation dealt round-robin.

    Every rank gets n // world indices (the remainder is dropped), so no rank runs an extra step and
    waits forever for the others. Example: n 5, world 2, permutation [3 0 4 1 2] -> rank 0 [3 4], rank 1 [0 1].
    """
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    per = n // world
    return order[rank::world][:per]


class BatchStream:
    """This rank's micro-batches from a dataset, resumable exactly.

    Map-style datasets (len + getitem): the shard_order of each epoch is cut into batch_size slices;
    a slice that would run past the epoch's end starts the next epoch instead. State: (epoch, cursor).
    Iterable datasets: examples are dealt round-robin to the ranks (every rank reads the whole stream
    and keeps its share, so example building is repeated per rank); state is the dataset's own
    state_dict() when it has one, else the number of examples consumed (replayed on resume).
    A dataset's own state_dict() (e.g. a mixture sampler) is saved with the stream's in both cases.
    """

    def __init__(self, dataset: Any, collate: Callable[[list], Any], batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.seed, self.rank, self.world, self.shuffle = batch_size, seed, rank, world, shuffle
        self.map_style = hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
        self.epoch, self.cursor, self.consumed = 0, 0, 0
        self._order: list[int] | None = None
        self._it: Iterator | None = None
        if self.map_style and len(dataset) // world < batch_size:
            raise ValueError(f"dataset has {len(dataset)} examples: fewer than batch_size {batch_size} per rank "
                             f"x {world} rank(s)")

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Any:
        if self.map_style:
            return self.collate([self.dataset[i] for i in self._next_indices()])
        return self.collate([self._next_example() for _ in range(self.batch_size)])

    def _next_indices(self) -> list[int]:
        if self._order is None:
            self._order = shard_order(len(self.dataset), self.seed, self.epoch, self.rank, self.world, self.shuffle)
        if self.cursor + self.batch_size > len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = shard_order(len(self.dataset), self.seed, self.epoch, self.rank, self.world, self.shuffle)
        idx = self._order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def _raw_next(self) -> Any:
        if self._it is None:
            self._it = iter(self.dataset)
        try:
            ex = next(self._it)
        except StopIteration:  # a finite iterable: start over (a new epoch)
            self._it = iter(self.dataset)
            ex = next(self._it, None)
            if ex is None:
                raise RuntimeError("the training dataset yielded no examples") from None
        self.consumed += 1
        return ex

    def _next_example(self) -> Any:
        while True:
            ex = self._raw_next()
            if (self.consumed - 1) % self.world == self.rank:
                return ex

    def state_dict(self) -> dict:
        out = {"epoch": self.epoch, "cursor": self.cursor, "consumed": self.consumed}
        if hasattr(self.dataset, "state_dict"):
            out["dataset"] = self.dataset.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.consumed = state["epoch"], state["cursor"], state["consumed"]
        self._order, self._it = None, None
        if "dataset" in state and hasattr(self.dataset, "load_state_dict"):
            self.dataset.load_state_dict(state["dataset"])
        elif not self.map_style and self.consumed:  # replay a plain iterable up to the saved position
            n, self.consumed = self.consumed, 0
            for _ in range(n):
                self._raw_next()
