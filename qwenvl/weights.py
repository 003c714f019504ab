"""The only checkpoint reader and writer: Hugging Face folder layout, safetensors shards, strict checks.

Reading streams tensor by tensor with plain file reads (no mmap of whole shards), straight into the
parameters of a model built on the meta device, so peak memory stays close to the weight bytes.
Before any data is read, the checkpoint's key list is checked against the model: a missing,
unexpected or mis-shaped key is a ValueError that names it (a silently random vision tower is a
known failure elsewhere).

The family (qwenvl.families) owns the key names: it maps every accepted layout onto its canonical one
(legacy visual.* / model.* for Qwen2-style releases, transformer.* for Qwen-VL v1, ...), which is what
the strict check compares and what we save, and streams canonical tensors onto our module names.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from qwenvl import families
from qwenvl.config import QwenVLConfig

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


# ---------------------------------------------------------------------------------------------
# reading


def read_config(folder: str | Path) -> QwenVLConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint folder {folder}")
    try:
        return families.from_hf_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor table, byte offset of the data section) of one .safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path):
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder, checked to exist (a missing shard is named)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"checkpoint {folder} is missing shard(s) listed in {index_name}: {missing}")
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if found:
        return [folder / p for p in found]
    raise FileNotFoundError(f"no model.safetensors(.index.json) or pytorch_model.bin in {folder}")


def _st_keys(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    header, _ = safetensors_header(path)
    return {k: (_ST_DTYPES[v["dtype"]], tuple(v["shape"])) for k, v in header.items()}


def iter_safetensors(path: Path, names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) reading each tensor's bytes with readinto (no mmap, one tensor in flight)."""
    header, base = safetensors_header(path)
    with open(path, "rb", buffering=0) as f:
        for name, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if names is not None and name not in names:
                continue
            start, end = meta["data_offsets"]
            t = torch.empty(meta["shape"], dtype=_ST_DTYPES[meta["dtype"]])
            buf = memoryview(t.view(torch.uint8).numpy()).cast("B") if t.numel() else memoryview(b"")
            f.seek(base + start)
            got = f.readinto(buf) if t.numel() else 0
            if got != end - start:
                raise ValueError(f"{path}: tensor {name} truncated ({got} of {end - start} bytes)")
            yield name, t


def stored_dtype(folder: str | Path) -> torch.dtype | None:
    """The floating dtype holding most of a safetensors checkpoint's weights (headers only), None for .bin."""
    counts: dict[torch.dtype, int] = {}
    for path in checkpoint_files(folder):
        if path.suffix != ".safetensors":
            return None
        for dt, shape in _st_keys(path).values():
            if dt.is_floating_point:
                counts[dt] = counts.get(dt, 0) + math.prod(shape)
    return max(counts, key=counts.__getitem__) if counts else None


def _bin_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_keys(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    out = {}
    for p in files:
        if p.suffix == ".safetensors":
            out.update({k: (shape, p) for k, (_, shape) in _st_keys(p).items()})
        else:
            out.update({k: (tuple(t.shape), p) for k, t in _bin_state(p).items()})
    return out


def iter_checkpoint(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for p in files:
        if p.suffix == ".safetensors":
            yield from iter_safetensors(p)
        else:
            yield from _bin_state(p).items()


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    old = getattr(mod, attr)
    if isinstance(old, nn.Parameter):
        setattr(mod, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        mod._buffers[attr] = value


def check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise a ValueError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}"
                    for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if items:
                more = f" (+{len(items) - 20} more)" if len(items) > 20 else ""
                parts.append(f"{label} ({len(items)}): {items[:20]}{more}")
        raise ValueError(f"checkpoint {where} does not match the model config: " + "; ".join(parts))


def _canonical_shapes(model: nn.Module, cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of what saving `model` writes, in its family's canonical layout."""
    return {k: tuple(v.shape) for k, v in families.of(cfg).export_state(model.state_dict(), cfg).items()}


def checkpoint_shapes(cfg: QwenVLConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape a checkpoint for `cfg` holds in its family's canonical layout (a meta-device
    build: no memory)."""
    from qwenvl.model.qwenvl import QwenVLModel

    with torch.device("meta"):
        model = QwenVLModel(cfg)
    return _canonical_shapes(model, cfg)


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               cfg: QwenVLConfig | None = None) -> nn.Module:
    """Build the model for `folder`'s config.json and stream its weights in, strictly."""
    from qwenvl.model.qwenvl import QwenVLModel

    folder = Path(folder)
    cfg = cfg or read_config(folder)
    files = checkpoint_files(folder)
    with torch.device("meta"):
        model = QwenVLModel(cfg)
    family = families.of(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # both sides in the family's canonical names, so a refusal names keys as the checkpoint spells them
    expected = _canonical_shapes(model, cfg)
    found = family.canonical_shapes({k: s for k, (s, _) in checkpoint_keys(files).items()}, cfg)
    tensors = family.import_tensors(iter_checkpoint(files), cfg)
    check_keys(expected, found, str(folder))
    for name, t in tensors:
        if name not in ours:
            continue
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        _set_tensor(model, name, t)
        del t
    init_buffers(model, device)
    return model.eval()


def init_buffers(model: nn.Module, device: str | torch.device) -> None:
    """Recreate non-persistent buffers (RoPE tables) that a meta-device build left empty."""
    for mod in model.modules():
        if hasattr(mod, "reset_buffers"):
            mod.reset_buffers(device)


# ---------------------------------------------------------------------------------------------
# writing


def save_model(model: nn.Module, folder: str | Path, max_shard_bytes: int = 2 * 1024**3,
               dtype: torch.dtype | None = None) -> None:
    """Write config.json + safetensors shards (+ index when sharded) in the official layout.

    Shards are written to temporary names and renamed at the end, so a crash never leaves a folder
    that looks complete.
    """
    from safetensors.torch import save_file

    if getattr(model, "quantized", None):
        raise ValueError("this model is weight-only quantized (qwenvl.engine.quant), which is inference-only: "
                         "save the float model before quantizing, or reload the checkpoint")
    cfg: QwenVLConfig = model.cfg
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = families.of(cfg).export_state({k: v.detach() for k, v in model.state_dict().items()}, cfg)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        n = state[k].numel() * state[k].element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k].contiguous()
        size += n
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / (name + ".tmp")), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards, strict=True) for k in s}}
        _write_json(folder / "model.safetensors.index.json", index)
    for name in names:
        os.replace(folder / (name + ".tmp"), folder / name)
    hf = families.to_hf_dict(cfg)
    any_param = next(model.parameters())
    hf["torch_dtype"] = hf["dtype"] = str(dtype or any_param.dtype).removeprefix("torch.")
    _write_json(folder / "config.json", hf)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
