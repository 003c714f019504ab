"""A small fixed probe of a shipped model: generated held-out questions answered with the real image and
with a blank one, so a test can tell a model that sees from one that guesses from the text.

    spec = {"seed": 5, "image_size": 140, "family": "qwen2_5_vl", "n": 16}
    report = run_probe(qwenvl.load("qwenvl-tiny"), spec, workdir)   # {"tasks": {...}, "gap": points}

The samples come from the generator's test split (qwenvl/data/synth.make_sample), so the same spec
gives the same images and questions on any machine; answers are greedy in float32. ship.py records the
report and the margin in the model folder's probe.json; tests/test_shipped_model.py recomputes it.
Must not: train, or read the training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROBE_TASKS = ("vqa", "count", "grounding", "ocr")
SLACK_POINTS = 3.0  # the recorded margin sits this far below the gap measured at ship time (argmax ties
# may break differently on another CPU's float32 kernels; a model that stops seeing loses far more)


def probe_records(spec: dict[str, Any], workdir: str | Path) -> list[dict]:
    """spec["n"] records per task of PROBE_TASKS (test split, English and Chinese alternating), images
    written under workdir with absolute paths in the records."""
    from qwenvl.data.synth import make_sample, resolve_config

    cfg = resolve_config(seed=spec["seed"], image_size=spec["image_size"], family=spec["family"],
                         tasks=PROBE_TASKS, difficulty=spec.get("difficulty"))
    out, root = [], Path(workdir)
    for task in PROBE_TASKS:
        for i in range(spec["n"]):
            rec, images = make_sample(cfg, task, "test", i)
            paths = {}
            for rel, img in images:
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
                paths[rel] = str(path)
            for m in rec["messages"]:
                for part in m["content"]:
                    if part.get("type") == "image":
                        part["image"] = paths.get(part["image"], part["image"])
            out.append(rec)
    return out


def run_probe(pipe, spec: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    """Per task: the headline metric with the real image and the blank one (fractions) and the gap in
    points; "gap": the mean gap over the tasks."""
    from qwenvl.eval.runner import evaluate

    report = evaluate(pipe, probe_records(spec, workdir), likelihood=False, progress=False)
    tasks = {t: {"metric": v["metric"], "n": v["n"], "real": v["real"], "blank": v["blank"],
                 "gap": v["real_minus_blank"]} for t, v in report["blind"]["tasks"].items()}
    gaps = [v["gap"] for v in tasks.values() if v["gap"] is not None]
    return {"spec": dict(spec), "tasks": tasks, "gap": sum(gaps) / len(gaps) if gaps else 0.0}


def recorded_margin(report: dict[str, Any]) -> float:
    """The mean real - blank gap (points) the model must keep: the ship-time gap less SLACK_POINTS."""
    return round(report["gap"] - SLACK_POINTS, 1)


# plain renders: not from the generator (its own drawing code, pure white, CSS-like colours, the question
# as a new user types it), one large shape in the middle
PLAIN_COLOURS = {"red": (230, 20, 20), "green": (20, 160, 40), "blue": (20, 60, 230), "yellow": (240, 200, 0),
                 "purple": (140, 40, 190)}
PLAIN_QUESTIONS = {"en": "What color is the square?", "zh": "正方形是什么颜色？"}


def plain_render(colour: tuple[int, int, int], size: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    m = size // 4
    ImageDraw.Draw(img).rectangle([m, m, size - m, size - m], fill=colour)
    return img


def plain_colour_check(pipe, size: int = 140) -> dict[str, Any]:
    """{lang: {"right": k, "of": 5, "answers": {colour: text}}}: does the model name the square's colour?
    An answer counts when it names the colour (English word, or the Chinese name's first character)."""
    from qwenvl.data.phrases import COLOUR

    out: dict[str, Any] = {}
    for lang, question in PLAIN_QUESTIONS.items():
        answers, right = {}, 0
        for name, rgb in PLAIN_COLOURS.items():
            msgs = [{"role": "user", "content": [{"type": "image", "image": plain_render(rgb, size)},
                                                 {"type": "text", "text": question}]}]
            text = pipe.chat(msgs, max_new_tokens=16, temperature=0.0).text.strip()
            answers[name] = text
            want = name if lang == "en" else COLOUR["zh"][name][0]
            others = [c if lang == "en" else COLOUR["zh"][c][0] for c in PLAIN_COLOURS if c != name]
            right += want in text.lower() and not any(o in text.lower() for o in others)
        out[lang] = {"right": right, "of": len(PLAIN_COLOURS), "answers": answers}
    return out
