"""Grounding: ask the model where a phrase is, boxes back in original-image pixels, optional overlay PNG.

The prompt is the synthetic data's phrasing ("Find {obj}.", qwenvl/data/phrases.py "ground"), which the
shipped models were trained on. Must not: parse boxes (grounding.py) or draw by hand (draw.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenvl.processing.image import load_image

PROMPT = "Find {phrase}."


def ground(pipe: Any, image: str, phrase: str, out: str | None = None, **chat_kw: Any) -> dict:
    """{"text", "boxes": [{x1, y1, x2, y2, label?}...]} for `phrase` in `image`; draws them to `out` if given."""
    img = load_image(image)
    res = pipe.chat([{"role": "user", "content": [{"type": "image", "image": image},
                                                  {"type": "text", "text": PROMPT.format(phrase=phrase)}]}],
                    **chat_kw)
    if out:
        from qwenvl.processing.draw import draw_boxes
        from qwenvl.processing.grounding import Box

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        draw_boxes(img, [Box(**b) for b in res.boxes]).save(out)
    return {"text": res.text, "boxes": res.boxes}
