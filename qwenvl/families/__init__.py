"""The family registry: each Qwen-VL generation is one module here, found by name or config.json model_type.

    fam = families.get(cfg.family)            # or families.for_model_type("qwen3_vl_moe")
    cfg = families.from_hf_dict(json_dict)    # dispatches on model_type
    d = families.to_hf_dict(cfg)

Adding a generation = one module that subclasses base.Family, listed in _MODULES.
"""

from __future__ import annotations

from qwenvl.config import FAMILY_NAMES, QwenVLConfig
from qwenvl.families import qwen2_5_vl, qwen2_vl, qwen3_vl, qwen_vl
from qwenvl.families.base import Family

_MODULES = (qwen_vl, qwen2_vl, qwen2_5_vl, qwen3_vl)
FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in _MODULES}
_BY_MODEL_TYPE: dict[str, Family] = {mt: m.FAMILY for m in _MODULES for mt in m.FAMILY.model_types}
assert tuple(FAMILIES) == FAMILY_NAMES, "config.FAMILY_NAMES and the registry disagree"
MODEL_TYPES = tuple(_BY_MODEL_TYPE)


def get(name: str) -> Family:
    """A family by its name (config.FAMILY_NAMES)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {list(FAMILIES)}")
    return FAMILIES[name]


def of(cfg: QwenVLConfig) -> Family:
    return get(cfg.family)


def for_model_type(model_type: object) -> Family:
    """The family that reads a config.json with this model_type."""
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(f"unsupported model_type {model_type!r}: expected one of {list(MODEL_TYPES)}")
    return _BY_MODEL_TYPE[model_type]


def from_hf_dict(d: dict) -> QwenVLConfig:
    """Build a config from a parsed `config.json` (any supported generation and form)."""
    if not isinstance(d, dict):
        raise ValueError(f"invalid config: expected a JSON object, got {type(d).__name__}")
    return for_model_type(d.get("model_type")).parse_config(d)


def to_hf_dict(cfg: QwenVLConfig) -> dict:
    """The `config.json` that the reference implementation loads for this config."""
    return of(cfg).dump_config(cfg)


__all__ = ["FAMILIES", "MODEL_TYPES", "Family", "for_model_type", "from_hf_dict", "get", "of", "to_hf_dict"]
