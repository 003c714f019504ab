"""Synthetic image+text data for training and evaluating the Qwen-VL family from scratch.

    from qwenvl.data import generate, load_records
    generate("data/synth", n_per_task=1000, seed=0)          # PNGs + {train,val,test}.jsonl + manifest.json
    for rec in load_records("data/synth/train.jsonl"): ...     # also reads Qwen-VL finetune / OpenAI JSON(L)

Nothing happens at import (fonts are looked up on first use).
"""

from qwenvl.data.formats import RecordError, load_records, to_finetune
from qwenvl.data.synth import generate, main_synth, make_sample, resolve_config, version_hash
from qwenvl.data.tasks import TASKS

__all__ = ["TASKS", "RecordError", "generate", "load_records", "main_synth", "make_sample", "resolve_config",
           "to_finetune", "version_hash"]
