"""TrainConfig: a TOML recipe (+ `--set a.b=value` overrides) -> frozen, validated dataclasses.

    cfg = load_config("recipes/stage1_pretrain.toml", ["schedule.max_steps=20", "run.precision=fp32"])

A recipe is data, not code: no field names a Python object to import. Every table of the recipe
maps to one dataclass below; an unknown table or key is an error that names it and lists the known
ones, and a value of the wrong type is an error that names the key and the expected type.
Relative paths in a recipe are relative to the working directory the command runs in.
Must not: build models, read data or touch torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUPS = ("vision", "adapter", "llm")
POLICY_NAMES = ("stage0_text", "stage1", "stage2", "stage3", "fix_vit", "full", "custom")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXPORT_DTYPES = ("float32", "bfloat16")
PRECISIONS = ("auto", "bf16", "fp32")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid train config: {msg}")


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from: an HF-layout checkpoint folder, or a config to build from scratch."""

    init: str = ""  # checkpoint folder (config.json + safetensors) to start from
    config: str = ""  # a config.json path to build a random model from
    arch: dict = field(default_factory=dict)  # the same, inline (config.json keys, e.g. the v1 `visual` block)
    init_std: float = 0.02  # from scratch: N(0, std) for Linear / Embedding weights, zero biases

    def __post_init__(self) -> None:
        given = [k for k in ("init", "config", "arch") if getattr(self, k)]
        _check(len(given) == 1, f"model needs exactly one of init / config / arch, got {given or 'none'}")
        _check(self.init_std > 0, "model.init_std must be > 0")


@dataclass(frozen=True)
class DataConfig:
    """What qwenvl.train.data reads; the loop itself only passes this through."""

    format: str = "chat"  # "chat": conversations, assistant turns supervised (SFTDataset); "text": plain
    #                       documents, every token a target (TextDataset, stage 0)
    train: tuple[str, ...] = ()  # .jsonl / .json record files
    weights: tuple[float, ...] = ()  # mixture weights, one per train file (empty: the files concatenated)
    tasks: dict = field(default_factory=dict)  # {task: weight}: mix records by their "task" field (synth data);
    #                                            tasks not listed are left out, also from val
    val: tuple[str, ...] = ()
    tokenizer: str = ""  # folder with the tokenizer files (qwen.tiktoken / tokenizer.json); empty: model.init
    image_size: int = 0  # v1 input side in px fed to the tower; 0: the model's vision.image_size
    min_pixels: int = 0  # v2 pixel budget per image; 0: the processor default
    max_pixels: int = 0
    max_len: int = 512  # tokens per row (packed rows hold several samples)
    packing: bool = False
    drop_media: bool = False  # chat: remove image / video parts (stage 0 learns the chat text of every task)

    def __post_init__(self) -> None:
        _check(self.format in ("chat", "text"), f"data.format {self.format!r} not one of ('chat', 'text')")
        _check(not self.weights or len(self.weights) == len(self.train),
               f"data.weights has {len(self.weights)} entries but data.train has {len(self.train)}")
        _check(all(w >= 0 for w in self.weights), "data.weights must be >= 0")
        bad = {k: v for k, v in self.tasks.items() if isinstance(v, bool) or not isinstance(v, int | float) or v < 0}
        _check(not bad, f"data.tasks weights must be numbers >= 0, got {bad}")
        _check(not (self.tasks and self.weights), "use data.tasks or data.weights, not both")
        _check(self.max_len >= 2, "data.max_len must be >= 2")
        _check(self.image_size >= 0 and self.min_pixels >= 0 and self.max_pixels >= 0, "data sizes must be >= 0")


@dataclass(frozen=True)
class StageConfig:
    """Which parts train (freeze.py) and the v1 resolution change between stage 1 and stage 2."""

    policy: str = "full"  # one of POLICY_NAMES
    trainable: tuple[str, ...] = ()  # policy "custom" only: a subset of GROUPS
    image_size: int = 0  # v1: new tower input side (e.g. 224 for stage 2 after 112 px stage 1); 0 keeps it
    resize_pos_embed: bool = False  # v1: resample the learned ViT position table to the new patch grid

    def __post_init__(self) -> None:
        _check(self.policy in POLICY_NAMES, f"stage.policy {self.policy!r} not one of {POLICY_NAMES}")
        bad = [g for g in self.trainable if g not in GROUPS]
        _check(not bad, f"stage.trainable has unknown groups {bad}; known {GROUPS}")
        _check(self.policy == "custom" or not self.trainable,
               "stage.trainable is only read with policy = \"custom\"")
        _check(self.image_size >= 0, "stage.image_size must be >= 0")
        _check(not self.resize_pos_embed or self.image_size > 0, "stage.resize_pos_embed needs stage.image_size")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + linear warmup + cosine to min_lr (paper defaults: facts A.9)."""

    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps == 0: a fraction of the total steps
    weight_decay: float = 0.05
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    clip: float = 1.0  # max global grad norm; 0 disables
    vit_layer_decay: float = 1.0  # ViT layer-wise LR decay (paper 0.95 in stages 1-2); 1.0 = off

    def __post_init__(self) -> None:
        _check(self.lr > 0 and 0 <= self.min_lr <= self.lr, f"need 0 <= optim.min_lr <= optim.lr, "
               f"got lr {self.lr}, min_lr {self.min_lr}")
        _check(self.warmup_steps >= 0 and 0 <= self.warmup_ratio < 1, "warmup must be >= 0 (ratio < 1)")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas {self.betas}")
        _check(self.eps > 0 and self.weight_decay >= 0 and self.clip >= 0, "eps > 0, weight_decay and clip >= 0")
        _check(0 < self.vit_layer_decay <= 1, "optim.vit_layer_decay must be in (0, 1]")


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and how big. The LR schedule is over optimizer steps: with only max_minutes, the loop
    times `calibrate_steps` probe steps first and sets the step count from the wall-clock budget."""

    max_steps: int = 0
    max_minutes: float = 0.0  # wall clock (this machine), including eval and checkpoints
    calibrate_steps: int = 3
    batch_size: int = 8  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step

    def __post_init__(self) -> None:
        _check(self.max_steps > 0 or self.max_minutes > 0, "set schedule.max_steps and/or schedule.max_minutes")
        _check(self.max_steps >= 0 and self.max_minutes >= 0, "schedule budgets must be >= 0")
        _check(self.batch_size >= 1 and self.grad_accum >= 1 and self.calibrate_steps >= 1,
               "batch_size, grad_accum and calibrate_steps must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    # compute precision: "bf16" autocast (fp32 master weights) or "fp32"; "auto" picks bf16 only where the CPU
    # has native bf16 (avx512_bf16 / AMX; engine/precision.auto_dtype), since elsewhere bf16 matmuls are
    # emulated and 3-370x slower than fp32. fp16 is never offered. The legacy `bf16 = true|false` still reads.
    precision: str = "auto"
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_every: int = 0  # 0: eval only at the end (when data.val is given)
    eval_batches: int = 8
    ckpt_every: int = 0  # 0: checkpoint only at the end
    keep_last: int = 2
    export: bool = True  # write output_dir/final in the HF layout at the end (LoRA merged)
    export_dtype: str = "float32"
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # also write TensorBoard scalars when torch.utils.tensorboard imports
    fsdp: bool = False  # multi-process: shard with torch.distributed.fsdp.fully_shard instead of DDP

    def __post_init__(self) -> None:
        _check(bool(self.output_dir), "run.output_dir must be set")
        _check(self.log_every >= 1 and self.eval_every >= 0 and self.ckpt_every >= 0 and self.eval_batches >= 1,
               "log_every / eval_batches >= 1, eval_every / ckpt_every >= 0")
        _check(self.keep_last >= 1, "run.keep_last must be >= 1")
        _check(self.export_dtype in EXPORT_DTYPES, f"run.export_dtype {self.export_dtype!r} not one of "
               f"{EXPORT_DTYPES}")
        _check(self.precision in PRECISIONS, f"run.precision {self.precision!r} not one of {PRECISIONS}")


@dataclass(frozen=True)
class LoraConfig:
    """PEFT LoRA on the decoder (facts A.10: official r 64, alpha 16, dropout 0.05, c_attn/attn.c_proj/w1/w2)."""

    enabled: bool = False
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj")
    modules_to_save: tuple[str, ...] = ()  # e.g. ["embed_tokens", "lm_head"] (official, base model only)

    def __post_init__(self) -> None:
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        _check(not bad, f"lora.targets has unknown modules {bad}; known {LORA_TARGETS}")
        _check(self.r >= 1 and self.alpha > 0 and 0 <= self.dropout < 1, "lora r >= 1, alpha > 0, 0 <= dropout < 1")
        bad = [m for m in self.modules_to_save if m not in ("embed_tokens", "lm_head")]
        _check(not bad, f"lora.modules_to_save {bad}: only embed_tokens / lm_head")


@dataclass(frozen=True)
class AuxConfig:
    """Training-only losses beside the answer tokens (train/dense.py); nothing here reaches the export."""

    dense: float = 0.0  # weight of the dense vision targets (per-cell colour, shape, centres, glyphs); 0 = off
    dense_sub: int = 1  # cells per feature token along each side (2: one per ViT patch of a 2x2 merge)
    answer: float = 1.0  # weight of the answer cross-entropy; 0 = a vision-only stage (the decoder never runs)
    point: float = 0.0  # weight of the pointing loss (train/point.py): answer attention onto the named object
    point_layer: int = -1  # the decoder layer whose attention points; -1 = the middle one (num_layers // 2)

    def __post_init__(self) -> None:
        _check(self.dense >= 0 and self.answer >= 0, "aux.dense and aux.answer must be >= 0")
        _check(self.dense > 0 or self.answer > 0, "aux.dense and aux.answer cannot both be 0 (nothing to learn)")
        _check(1 <= self.dense_sub <= 4, "aux.dense_sub must be 1..4")
        _check(self.point >= 0 and self.point_layer >= -1, "aux.point must be >= 0, aux.point_layer >= -1")
        _check(self.point == 0 or self.answer > 0, "aux.point needs the decoder to run (aux.answer > 0)")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(max_steps=100))
    run: RunConfig = field(default_factory=RunConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)

    def __post_init__(self) -> None:
        _check(not (self.lora.enabled and self.stage.policy != "full"),
               "with lora.enabled PEFT freezes everything but the LoRA weights; leave stage.policy at \"full\"")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)


_SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "stage": StageConfig, "optim": OptimConfig,
                  "schedule": ScheduleConfig, "run": RunConfig, "lora": LoraConfig, "aux": AuxConfig}
# run.* fields that do not change the computation: a resume may change them
BOOKKEEPING = ("output_dir", "log_every", "eval_every", "eval_batches", "ckpt_every", "keep_last", "export",
               "export_dtype", "progress", "tensorboard")


# ----------------------------------------------------------------------------------------------
# dict -> dataclasses, with named errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` (parsed TOML) against the field type `tp`; return it in the field's form."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item, *_rest) = typing.get_args(tp)
        if item is str and isinstance(value, str):  # `--set data.train=a.jsonl`: a one-item list
            value = [value]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list of {_type_name(item)}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"{key}: union field types are not supported")
    if tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a table, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {tp}")


def _legacy_bf16(table: dict, where: str) -> None:
    """`run.bf16 = true|false` (before run.precision) -> run.precision "bf16" | "fp32", in place."""
    if "bf16" not in table:
        return
    value = _coerce(f"{where}.bf16", table.pop("bf16"), bool)
    if "precision" in table:
        raise ValueError(f"{where}: set run.precision only (run.bf16 is its old spelling)")
    table["precision"] = "bf16" if value else "fp32"


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"[{name}] must be a table, got {raw!r}")
    if name == "run":
        raw = dict(raw)
        _legacy_bf16(raw, "run")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ValueError(f"unknown key(s) {[f'{name}.{k}' for k in unknown]}; [{name}] knows {sorted(hints)}")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()})


def from_dict(d: dict) -> TrainConfig:
    unknown = sorted(set(d) - set(_SECTION_TYPES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; a recipe has {sorted(_SECTION_TYPES)}")
    if "model" not in d:
        raise ValueError("the recipe has no [model] table")
    sections = {name: _section(name, cls, d[name]) for name, cls in _SECTION_TYPES.items() if name in d}
    return TrainConfig(**sections)


# ----------------------------------------------------------------------------------------------
# overrides


def parse_value(text: str) -> Any:
    """A `--set` value as TOML (`3`, `1e-4`, `true`, `"x"`, `[1, 2]`); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_nested(table: dict, path: list[str], value: Any, full: str, where: str, allow_new: bool) -> None:
    """`--set model.arch.visual.layers=2` / `--set data.tasks.ocr=0.5`: a key inside a table-valued field.

    model.arch only takes keys the recipe already has, with the same type (a typo must not pass
    silently); data.tasks also takes new task names.
    """
    node = table
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            raise ValueError(f"--set {full}: {where} has no table {part!r}")
        node = node[part]
    leaf = path[-1]
    if leaf not in node:
        if allow_new:
            node[leaf] = value
            return
        raise ValueError(f"--set {full}: unknown key {leaf!r}; this {where} table has {sorted(node)}")
    old = node[leaf]
    ok = isinstance(value, type(old)) or (isinstance(old, float) and isinstance(value, int))
    if isinstance(old, bool) != isinstance(value, bool) or not ok:
        raise ValueError(f"--set {full}: expected {type(old).__name__} like the recipe's {old!r}, got {value!r}")
    node[leaf] = value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` strings to a parsed recipe dict (a deep copy is returned)."""
    d = json.loads(json.dumps(d))
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        parts = key.split(".")
        if parts[0] not in _SECTION_TYPES:
            raise ValueError(f"--set {key}: unknown table {parts[0]!r}; known {sorted(_SECTION_TYPES)}")
        value = parse_value(text.strip())
        if parts == ["run", "bf16"]:  # the old spelling of run.precision
            value = "bf16" if _coerce(key, value, bool) else "fp32"
            parts = ["run", "precision"]
        if parts == ["run", "precision"]:
            d.setdefault("run", {}).pop("bf16", None)  # the override replaces the recipe's old-style setting
        hints = typing.get_type_hints(_SECTION_TYPES[parts[0]])
        if len(parts) < 2 or parts[1] not in hints:
            raise ValueError(f"--set {key}: unknown key; [{parts[0]}] knows {sorted(hints)}")
        table = d.setdefault(parts[0], {})
        if len(parts) > 2:
            if hints[parts[1]] is not dict:
                raise ValueError(f"--set {key}: {parts[0]}.{parts[1]} is not a table")
            where = f"{parts[0]}.{parts[1]}"
            _set_nested(table.setdefault(parts[1], {}), parts[2:], value, key, where, allow_new=where != "model.arch")
        else:
            _coerce(key, value, hints[parts[1]])  # type error now, naming the --set key
            table[parts[1]] = value
    return d


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML recipe, apply `--set` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    try:
        return from_dict(apply_overrides(raw, overrides or []))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def config_hash(cfg: TrainConfig) -> str:
    """A hash of everything that changes the computation (run bookkeeping fields excluded)."""
    d = cfg.to_dict()
    for k in BOOKKEEPING:
        d["run"].pop(k)
    if cfg.aux == AuxConfig():  # recipes from before [aux] keep their hash
        d.pop("aux")
    elif cfg.aux.point == 0:  # and recipes from before aux.point keep theirs
        d["aux"].pop("point")
        d["aux"].pop("point_layer")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
