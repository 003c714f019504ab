"""The training loop: TrainConfig -> a trained, checkpointed, exported model.

    from qwenvl.train.config import load_config
    from qwenvl.train.loop import train
    summary = train(load_config("recipes/stage1_pretrain.toml"), resume=True)

One optimizer step = grad_accum micro-batches per process; the loss is the token-level mean over
every supervised target of the step on all ranks (so accumulation and process count do not change
the math). Precision (run.precision): "bf16" autocast (fp32 master weights) or "fp32"; "auto" (the
default) picks bf16 only where the CPU computes it natively (engine/precision.auto_dtype: avx512_bf16 or
AMX), since emulated bf16 is 3-370x slower than fp32. The choice and its reason go into the summary, the
checkpoint's meta.json and the log line. fp16 is never used (~1000x slower here).

Budgets: `schedule.max_steps` and/or `schedule.max_minutes`. The LR schedule is over steps; with only
minutes, `calibrate_steps` probe passes (forward + backward on the first batches, then the model,
data position and RNG are put back) time a step and fix total = remaining budget / (1.1 x step time);
that number is saved in checkpoints, so a resumed run keeps the same curve. The wall clock stops the
run in any case (all ranks agree on it each step).

Every trainable module takes part in every step: a batch without images adds a zero-weighted pass
of a 2x2-patch dummy image through the vision tower when any vision/adapter weight trains (pain
point 14; without it the text-only rank never produces the tower's gradients and DDP's collectives
fall out of step: an abort on gloo, a hang elsewhere).

Data: `train(cfg, data=DataSource(dataset, collate))`; with no DataSource the recipe's data.* go
through qwenvl.train.data (SFTDataset / TextDataset / Mixture) and qwenvl.train.collate (default_data).
Outputs in run.output_dir: checkpoints/ (checkpoint.py), metrics.csv + loss.png (+ tb/), final/.
Must not: parse recipes (config.py), pick frozen parameters (freeze.py) or write files other than
through checkpoint.py / metrics_log.py. (Longer than ~400 lines: the data seam, the model setup and
the run share one run state; split apart they would hand a dozen values back and forth.)
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qwenvl.train.batch import Batch, forward_loss
from qwenvl.train.checkpoint import (
    clean_stale,
    export_model,
    frozen_fingerprint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from qwenvl.train.config import TrainConfig, config_hash
from qwenvl.train.distributed import (
    BatchStream,
    DistInfo,
    all_reduce,
    barrier,
    gather_state,
    init_distributed,
    load_state,
    no_sync,
    shutdown,
    unwrap,
    wrap,
)
from qwenvl.train.freeze import apply_stage
from qwenvl.train.metrics_log import MetricsLog
from qwenvl.train.optim import WarmupCosine, build_optimizer

RECALIBRATE_AFTER = 20  # real steps before a minutes budget is re-fitted to the measured pace
AUX_FILE = "aux_dense.safetensors"  # the training-only dense head, saved beside an export (never loaded by qwenvl.load)


@dataclass
class DataSource:
    """A dataset (map-style or iterable) and the function that collates a list of its examples."""

    dataset: Any
    collate: Callable[[list], Batch]


def default_data(cfg: TrainConfig, split: str, model_cfg) -> DataSource | None:
    """The recipe's data.train / data.val as qwenvl.train.data datasets + qwenvl.train.collate.collate.

    data.format "chat" -> SFTDataset, "text" -> TextDataset. data.tasks {task: weight} -> a Mixture over
    the records' "task" field (val keeps the same tasks); several train files with data.weights -> a
    Mixture drawing file k with probability weights[k]. The tokenizer comes from data.tokenizer (or
    model.init); v1 images are resized to data.image_size (default: the tower's image_size).
    """
    from dataclasses import replace

    from qwenvl import families
    from qwenvl.train.collate import collate
    from qwenvl.train.data import Mixture, SFTDataset, TextDataset

    d = cfg.data
    paths = list(d.train if split == "train" else d.val)
    if not paths:
        return None
    folder = d.tokenizer or cfg.model.init
    if not folder:
        raise ValueError("set data.tokenizer to the folder with the tokenizer files (the model is built from scratch)")
    family = families.of(model_cfg)
    if d.image_size and family.fixed_resolution:
        model_cfg = model_cfg.replace(vision=replace(model_cfg.vision, image_size=d.image_size))
    processor = family.build_processor(Path(folder), model_cfg)
    # val is shuffled too (a fixed order per seed, replayed at every evaluation): synth files are grouped
    # by task, so the first eval_batches in file order would score one task only
    kw: dict[str, Any] = {"seed": cfg.run.seed, "shuffle": True}
    tasks = {str(k): float(v) for k, v in d.tasks.items() if v > 0}
    if tasks:
        kw["keep"] = lambda rec: str(rec.get("task")) in tasks
    kind = SFTDataset if d.format == "chat" else TextDataset
    if d.format == "chat" and d.drop_media:
        kw["drop_media"] = True
    if d.format == "chat" and cfg.aux.dense > 0:
        kw["dense"] = (model_cfg.vision, cfg.aux.dense_sub)
    if d.format == "chat" and cfg.aux.point > 0:
        kw["point"] = model_cfg.vision
    if d.format == "chat" and not family.fixed_resolution:
        budget = {k: v for k, v in (("min_pixels", d.min_pixels), ("max_pixels", d.max_pixels)) if v}
        kw["template_vars"] = budget or None
    if split == "train" and tasks and d.format == "chat":
        groups = SFTDataset.by_task(paths, processor, d.max_len, **kw)
        missing = sorted(set(tasks) - set(groups))
        if missing:
            raise ValueError(f"data.tasks names {missing}, but {paths} has no records of those tasks "
                             f"(found {sorted(groups)})")
        dataset: Any = Mixture(groups, tasks, seed=cfg.run.seed)
    elif split == "train" and d.weights and len(paths) > 1:
        dataset = Mixture({p: kind(p, processor, d.max_len, **kw) for p in paths},
                          dict(zip(paths, d.weights, strict=True)), seed=cfg.run.seed)
    else:
        dataset = kind(paths, processor, d.max_len, **kw)
    pad_id = model_cfg.bos_token_id

    def collate_fn(examples: list) -> Batch:
        return collate(examples, pad_id, d.packing, d.max_len)

    return DataSource(dataset, collate_fn)


# ----------------------------------------------------------------------------------------------
# model


def init_weights(model: nn.Module, std: float) -> None:
    """From-scratch init: N(0, std) Linear / Embedding weights, zero Linear biases (norms stay 1)."""
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def build_model(cfg: TrainConfig) -> nn.Module:
    """model.init (a checkpoint folder) or a seeded random model from model.config / model.arch."""
    from qwenvl.families import from_hf_dict
    from qwenvl.model.qwenvl import QwenVLModel
    from qwenvl.weights import load_model

    m = cfg.model
    if m.init:
        return load_model(m.init, torch.float32).train()
    hf = m.arch or json.loads(Path(m.config).read_text())
    torch.manual_seed(cfg.run.seed)
    model = QwenVLModel(from_hf_dict(hf))
    init_weights(model, m.init_std)
    return model.train()


def dummy_vision_input(model_cfg) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """The smallest input the tower accepts (the family says which: v1 a 2x2-patch image, else one merge block)."""
    from qwenvl import families

    return families.of(model_cfg).dummy_vision_input(model_cfg)


class LossModule(nn.Module):
    """forward(batch) -> the summed cross-entropy over the batch's targets (DDP / FSDP wrap this).

    With `dummy` set, a batch with no image or video adds 0 x (vision tower on a dummy input), so the
    tower's parameters get (zero) gradients on every rank every step. With a training-only dense head
    (`model.aux_dense`, train/dense.py) and targets in the batch, its mean loss is added with weight
    `dense`, scaled by the batch's answer-token count so the loop's 1/targets normalisation leaves it a
    mean; `answer` = 0 skips the decoder (a vision-only stage). With `point` > 0 the pointing loss
    (train/point.py) of decoder layer `point_layer` is added the same way.
    """

    def __init__(self, model: nn.Module, dummy: tuple | None, dense: float = 0.0, answer: float = 1.0,
                 point: float = 0.0, point_layer: int = -1) -> None:
        super().__init__()
        self.model = model
        self.dummy = dummy
        self.dense, self.answer, self.point = dense, answer, point
        self.last_aux: dict[str, float] = {}  # the last batch's dense-target accuracies / pointing mass (the log)
        self.tap = None
        if point > 0:
            from qwenvl.train.point import PointTap

            layers = model.model.layers
            self.tap = PointTap(layers[point_layer if point_layer >= 0 else len(layers) // 2].self_attn)

    def forward(self, batch: Batch) -> torch.Tensor:
        head = getattr(self.model, "aux_dense", None)
        img, loss = None, None
        self.last_aux = {}
        if head is not None and batch.dense is not None and batch.image_pixels is not None:
            img = self.model.encode_images(batch.image_pixels, batch.image_grid)
            dense, acc = head(img, batch.dense)
            self.last_aux = {f"dense_{k}": v for k, v in acc.items()}
            loss = self.dense * dense * batch.num_targets
        if self.answer > 0:
            answer = self.answer * forward_loss(self.model, batch, reduction="sum", img=img)
            loss = answer if loss is None else loss + answer
            if self.tap is not None:
                saved = self.tap.take()
                if batch.point is not None:
                    from qwenvl.train.point import point_loss

                    slots = self.model.placeholder_masks(batch.input_ids)[0]
                    pl, mass = point_loss(self.tap.attn, saved, slots, batch.labels, batch.segment_ids, batch.point)
                    if pl is not None:
                        loss = loss + self.point * pl * batch.num_targets
                        self.last_aux["point_mass"] = mass
        elif loss is None:  # vision-only stage, a batch without images for the head
            loss = torch.zeros((), requires_grad=True)
        if self.dummy is not None and self.training and batch.image_pixels is None and batch.video_pixels is None:
            pixels, grid = self.dummy
            loss = loss + 0.0 * self.model.encode_images(pixels, grid).float().sum()
        return loss


def attach_dense_head(model: nn.Module, cfg: TrainConfig) -> str:
    """model.aux_dense = a DenseHead (train/dense.py), restored from model.init's aux_dense.safetensors
    when an earlier stage left one there, so a later stage keeps the head it trained. Returns what was done
    (a saved head of another shape, e.g. another aux.dense_sub, is not loaded: the new one starts fresh)."""
    from qwenvl.train.dense import DenseHead

    model.aux_dense = head = DenseHead(model.cfg.text.hidden_size, cfg.aux.dense_sub)
    saved = Path(cfg.model.init) / AUX_FILE if cfg.model.init else None
    if saved is None or not saved.is_file():
        return "dense head: new"
    from safetensors.torch import load_file

    state = load_file(saved)
    want = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != want:
        return f"dense head: new ({saved} holds a head of other shapes than aux.dense_sub = {cfg.aux.dense_sub} needs)"
    head.load_state_dict(state)
    return f"dense head: restored from {saved}"


def set_gradient_checkpointing(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing"):
            m.gradient_checkpointing = on


# ----------------------------------------------------------------------------------------------
# the run


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """run.precision -> ("bf16" | "fp32", the reason in words); "auto" asks engine/precision.auto_dtype."""
    if precision in ("bf16", "fp32"):
        return precision, f"run.precision = {precision}"
    from qwenvl.engine.precision import auto_dtype

    dtype, why = auto_dtype(device)
    return ("bf16" if dtype == torch.bfloat16 else "fp32"), f"auto: {why}"


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, so a killed run unwinds like Ctrl-C (nothing half-written stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def train(cfg: TrainConfig, *, resume: bool = False, data: DataSource | None = None,
          val_data: DataSource | None = None) -> dict:
    """Run the recipe; returns a summary dict (steps, losses, elapsed, paths). See the module docstring."""
    info, created = init_distributed()
    try:
        with _sigterm_as_interrupt():
            return _Run(cfg, info, data, val_data).run(resume)
    finally:
        shutdown(created)


class _Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo, data: DataSource | None, val: DataSource | None) -> None:
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.run.output_dir)
        self.start_time = time.perf_counter()
        self.prior_elapsed = 0.0
        seed_everything(cfg.run.seed)
        self.model = build_model(cfg)
        self.trainable = apply_stage(self.model, cfg.stage)  # with LoRA: policy "full", PEFT then freezes
        self.peft = None
        if cfg.lora.enabled:
            if cfg.run.fsdp:
                raise ValueError("run.fsdp with lora.enabled is not supported (LoRA runs fit in DDP)")
            from qwenvl.train.lora import apply_lora, lora_parameters

            self.peft = apply_lora(self.model, cfg.lora)
            self.trainable = {"lora": sum(p.numel() for p in lora_parameters(self.model).values())}
        set_gradient_checkpointing(self.model, cfg.run.gradient_checkpointing)
        vision_trains = any(p.requires_grad for n, p in self.model.named_parameters() if n.startswith("visual."))
        if cfg.aux.dense > 0:
            self.say(attach_dense_head(self.model, cfg))
        self.loss_module = LossModule(self.model, dummy_vision_input(self.model.cfg) if vision_trains else None,
                                      cfg.aux.dense, cfg.aux.answer, cfg.aux.point, cfg.aux.point_layer)
        self.wrapped = wrap(self.loss_module, self.model, info, cfg.run.fsdp)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = WarmupCosine.from_config(self.optimizer, cfg.optim, cfg.schedule.max_steps)
        data = data or default_data(cfg, "train", self.model.cfg)
        if data is None:
            raise ValueError("no training data: set data.train in the recipe")
        self.val = val or default_data(cfg, "val", self.model.cfg)
        # a stateful val dataset is rewound before every eval, so each eval scores the same batches
        self.val_start = self.val.dataset.state_dict() if self.val and hasattr(self.val.dataset, "state_dict") else None
        s = cfg.schedule
        self.stream = BatchStream(data.dataset, data.collate, s.batch_size, cfg.run.seed, info.rank, info.world)
        self.metrics = MetricsLog(self.out, info.is_main, cfg.run.tensorboard)
        self.step, self.losses, self.val_losses, self.tokens = 0, {}, {}, 0
        self.precision, self.precision_reason = resolve_precision(cfg.run.precision)
        self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")
        self.last_ckpt: Path | None = None

    # -- helpers -----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.prior_elapsed + time.perf_counter() - self.start_time

    def say(self, msg: str) -> None:
        if self.info.is_main:
            import sys

            from tqdm import tqdm

            tqdm.write(f"[qwenvl train] {msg}", file=sys.stderr)

    def trainable_params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- setup -------------------------------------------------------------------------------------
    def restore(self, resume: bool) -> Path | None:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale(self.out)
        found = latest_checkpoint(self.out)
        if not resume:
            if list_checkpoints(self.out):
                raise ValueError(f"{self.out} holds checkpoints of an earlier run: pass --resume to continue it, "
                                 "or set run.output_dir to a new folder")
            return None
        if found is None:
            self.say(f"--resume: no complete checkpoint in {self.out}; starting from step 0")
            return None
        state, rank_state, meta = load_checkpoint(found, self.info)
        if meta["config_hash"] != config_hash(self.cfg):
            raise ValueError(f"{found} was written with a different recipe (config hash {meta['config_hash']} != "
                             f"{config_hash(self.cfg)}); only run.* bookkeeping fields may change on resume")
        fp = frozen_fingerprint(self.model)
        if abs(fp - meta["frozen_fingerprint"]) > 1e-6 * max(1.0, abs(fp)):
            raise ValueError(f"frozen weights differ from the run that wrote {found} (model.init changed?)")
        load_state(self.wrapped, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.prior_elapsed = state["step"], meta["elapsed_s"]
        if meta.get("precision", self.precision) != self.precision:  # run.precision "auto" on another CPU
            self.say(f"note: {found} trained in {meta['precision']}, this machine continues in {self.precision}")
        self.stream.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])  # last: model building above consumed RNG
        self.say(f"resumed from {found} (step {self.step})")
        return found

    def calibrate(self) -> None:
        """Minutes-only budget: time probe steps, then fix the schedule's step count (see module docstring)."""
        s = self.cfg.schedule
        saved_stream, saved_rng = self.stream.state_dict(), rng_state()
        times = []
        for _ in range(s.calibrate_steps + 1):
            t0 = time.perf_counter()
            for _ in range(s.grad_accum):
                batch = next(self.stream)
                with self.autocast():
                    loss = self.wrapped(batch)
                (loss * 0.0).backward()
            times.append(time.perf_counter() - t0)
        self.optimizer.zero_grad(set_to_none=True)
        self.stream.load_state_dict(saved_stream)
        set_rng_state(saved_rng)
        per_step = torch.tensor([sum(times[1:]) / s.calibrate_steps], dtype=torch.float64)
        per_step = float(all_reduce(per_step, self.info, "max"))
        remaining = s.max_minutes * 60 - self.elapsed()
        self.scheduler.total_steps = max(1, int(remaining / (1.1 * per_step)))
        self.say(f"calibrated: {per_step:.3f} s/step -> {self.scheduler.total_steps} steps in {s.max_minutes} min")

    def recalibrate(self, per_step: float) -> int:
        """Re-fit the step count to the measured pace of real steps: the probe steps are slow (first
        passes, allocator warm-up, other load), and a schedule that ends early wastes the budget."""
        per = float(all_reduce(torch.tensor([per_step], dtype=torch.float64), self.info, "max"))
        remaining = self.cfg.schedule.max_minutes * 60 - self.elapsed()
        self.scheduler.total_steps = max(self.step + 1, self.step + int(remaining / (1.1 * per)))
        self.say(f"recalibrated: {per:.3f} s/step -> {self.scheduler.total_steps} steps")
        return self.scheduler.total_steps

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, int, float]:
        """(loss, lr, tokens, grad norm) of one optimizer step over all ranks."""
        cfg, info = self.cfg, self.info
        micro = [next(self.stream) for _ in range(cfg.schedule.grad_accum)]
        counts = torch.tensor([sum(b.num_targets for b in micro), sum(int(b.key_valid.sum()) for b in micro)],
                              dtype=torch.float64)
        n_targets, n_tokens = all_reduce(counts, info).tolist()
        scale = info.world / max(n_targets, 1.0)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(micro):
            with no_sync(self.wrapped, i < len(micro) - 1):
                with self.autocast():
                    loss = self.wrapped(batch)
                (loss * scale).backward()
            loss_sum += loss.detach().double()
        params = self.trainable_params()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip if cfg.optim.clip > 0 else float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(norm):  # stop before the update: the weights and the last checkpoint stay good
            raise FloatingPointError(f"non-finite gradient norm at step {self.step + 1}; resume from "
                                     f"{self.last_ckpt or 'the start'} with a lower optim.lr or run.precision = "
                                     "\"fp32\"")
        lr = self.scheduler.apply(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        total = float(all_reduce(loss_sum, info)) / max(n_targets, 1.0)
        return total, lr, int(n_tokens), norm

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.val is None:
            return None
        module = self.wrapped if self.cfg.run.fsdp else unwrap(self.wrapped)
        if self.val_start is not None:
            self.val.dataset.load_state_dict(self.val_start)
        stream = BatchStream(self.val.dataset, self.val.collate, self.cfg.schedule.batch_size, 0, self.info.rank,
                             self.info.world, shuffle=False)
        module.eval()
        sums = torch.zeros(2, dtype=torch.float64)
        for _ in range(self.cfg.run.eval_batches):
            batch = next(stream)
            with self.autocast():
                sums[0] += float(module(batch))
            sums[1] += batch.num_targets
        module.train()
        total, n = all_reduce(sums, self.info).tolist()
        loss = total / max(n, 1.0)
        self.val_losses[self.step] = loss
        self.metrics.log("val", self.step, loss=loss, elapsed_s=self.elapsed(), precision=self.precision)
        return loss

    def checkpoint(self) -> None:
        model_state, optim_state = gather_state(self.wrapped, self.optimizer)
        state = {"model": model_state, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                 "step": self.step} if self.info.is_main else None
        meta = {"config_hash": config_hash(self.cfg), "elapsed_s": self.elapsed(),
                "total_steps": self.scheduler.total_steps, "frozen_fingerprint": frozen_fingerprint(self.model),
                "precision": self.precision}
        rank_state = {"rng": rng_state(), "data": self.stream.state_dict()}
        self.last_ckpt = save_checkpoint(self.out, self.step, self.info, state=state, rank_state=rank_state,
                                         meta=meta, keep_last=self.cfg.run.keep_last)
        self.metrics.plot()

    def export(self) -> Path | None:
        cfg = self.cfg
        if not cfg.run.export:
            return None
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.run.export_dtype]
        copy_from = cfg.data.tokenizer or cfg.model.init or None
        if cfg.run.fsdp and self.info.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            from qwenvl.model.qwenvl import QwenVLModel

            full = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not self.info.is_main:
                return None
            plain = QwenVLModel(self.model.cfg)
            plain.load_state_dict({k.removeprefix("model."): v for k, v in full.items()})
            return export_model(plain, self.out, dtype, copy_from)
        if not self.info.is_main:
            return None
        model = self.peft.merge_and_unload() if self.peft is not None else self.model
        head = model._modules.pop("aux_dense", None)  # training-only: never in the exported layout
        try:
            dest = export_model(model, self.out, dtype, copy_from)
        finally:
            if head is not None:
                model.aux_dense = head
        if head is not None:  # beside the export, for a later stage's model.init
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, dest / AUX_FILE)
        return dest

    # -- main --------------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict:
        cfg, s = self.cfg, self.cfg.schedule
        self.say(f"precision: {self.precision} ({self.precision_reason})")
        resumed = self.restore(resume)
        self.metrics.start(self.step if resumed else None)
        calibrated = self.scheduler.total_steps == 0
        if calibrated:
            self.calibrate()
        total, budget = self.scheduler.total_steps, s.max_minutes * 60
        t_loop, step0 = time.perf_counter(), self.step
        stopped = "max_steps"
        from tqdm import tqdm

        bar = tqdm(total=total, initial=self.step, disable=not (self.info.is_main and cfg.run.progress),
                   desc=f"train {cfg.stage.policy}", dynamic_ncols=True, unit="step")
        window, t_log, tok_log = [], time.perf_counter(), 0
        try:
            while self.step < total:
                loss, lr, tokens, norm = self.train_step()
                self.losses[self.step] = loss
                self.tokens += tokens
                window.append(loss)
                tok_log += tokens
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == total:
                    dt = time.perf_counter() - t_log
                    aux = self.loss_module.last_aux
                    self.metrics.log("train", self.step, loss=sum(window) / len(window), lr=lr, grad_norm=norm, **aux,
                                     tokens=self.tokens, tokens_per_s=tok_log / max(dt, 1e-9),
                                     elapsed_s=self.elapsed(), precision=self.precision)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_log / max(dt, 1e-9):.0f}", lr=f"{lr:.2e}",
                                    prec=self.precision)
                    window, t_log, tok_log = [], time.perf_counter(), 0
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self.step < total:
                    self.evaluate()
                if cfg.run.ckpt_every and self.step % cfg.run.ckpt_every == 0 and self.step < total:
                    self.checkpoint()
                if calibrated and self.step - step0 == RECALIBRATE_AFTER:
                    total = self.recalibrate((time.perf_counter() - t_loop) / RECALIBRATE_AFTER)
                    bar.total = total
                out_of_time = torch.tensor([float(budget > 0 and self.elapsed() >= budget)])
                if float(all_reduce(out_of_time, self.info, "max")):
                    stopped = "max_minutes"
                    break
        finally:
            bar.close()
        val = self.evaluate()
        if self.last_ckpt is None or not self.last_ckpt.name.endswith(f"{self.step:08d}"):
            self.checkpoint()
        exported = self.export()
        self.metrics.plot()
        self.metrics.close()
        barrier(self.info)  # ranks leave together (rank 0 was exporting)
        summary = {"step": self.step, "total_steps": total, "stopped": stopped, "losses": dict(self.losses),
                   "train_loss": self.losses.get(self.step), "val_loss": val, "val_losses": dict(self.val_losses),
                   "tokens": self.tokens, "elapsed_s": self.elapsed(), "trainable": self.trainable,
                   "output_dir": str(self.out), "checkpoint": str(self.last_ckpt),
                   "resumed_from": str(resumed) if resumed else None,
                   "export": str(exported) if exported else None,
                   "precision": self.precision, "precision_reason": self.precision_reason}
        self.say(f"done: step {self.step} ({self.precision}), train loss {summary['train_loss']}, val loss {val}, "
                 f"{summary['elapsed_s']:.0f} s; export {summary['export']}")
        return summary
