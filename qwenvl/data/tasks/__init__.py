"""The synthetic task registry: name -> Task (builder + difficulty knobs), in generation order."""

from __future__ import annotations

from qwenvl.data.tasks.base import LEVELS, SPLITS, Ctx, Sample, Task, sample_rng, split_of
from qwenvl.data.tasks.multi import TASKS as _MULTI
from qwenvl.data.tasks.scene import TASKS as _SCENE
from qwenvl.data.tasks.text import TASKS as _TEXT

TASKS: dict[str, Task] = {t.name: t for t in (*_SCENE, *_TEXT, *_MULTI)}

__all__ = ["LEVELS", "SPLITS", "TASKS", "Ctx", "Sample", "Task", "sample_rng", "split_of"]
