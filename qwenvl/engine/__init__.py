"""Inference engine: owns the KV cache, sampling and the decode loop. Token ids and pixels in; no HTTP, no templates.

    from qwenvl.engine import Engine, SamplingParams
    engine = Engine(model, decode=processor.decode)      # KV slot pool sized from a memory budget
    gen = engine.generate(inputs, SamplingParams(max_new_tokens=64))
"""

from qwenvl.engine.engine import Engine, Handle
from qwenvl.engine.sampling import SamplingParams, TokenLogprob
from qwenvl.engine.scheduler import Event, Generation

__all__ = ["Engine", "Event", "Generation", "Handle", "SamplingParams", "TokenLogprob"]
