"""Package a trained run as a shipped model folder: weights in bf16, tokenizer, per-stage report and plots.

    python -m qwenvl.train.ship runs/tiny25 qwenvl/assets/qwenvl-tiny --probe '{"seed": 5, ...}'

Reads RUN/<stage>/final (the last stage's export), RUN/<stage>/metrics.csv and RUN/eval/<stage>.json for
the stages in STAGES, and writes DEST: model.safetensors (bf16), config and tokenizer files, eval.json/.md
(the last stage), stages.md (the headline metrics after every stage), learning_curves.png (train / val
loss of all stages on one wall-clock axis, and accuracy per stage) and recipes.sha256.json (the recipe
files that produced it, so a test can tell when a recipe changed without retraining).
Must not: train or evaluate (it only reads their outputs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from pathlib import Path

import torch

STAGES = ("stage0_text", "stage1_vision", "stage1_pretrain", "stage2_multitask", "stage3_sft")  # those a run has
# (row in the eval summary, metric, label) -- the issue's headline figures
HEADLINE = (("vqa", "vqa_acc", "attribute VQA acc"), ("count", "vqa_acc", "counting acc"),
            ("grounding", "acc_iou50", "grounding Acc@IoU0.5"), ("ocr[3-5]", "exact_match", "OCR EM 3-5 chars"),
            ("ocr[6-8]", "exact_match", "OCR EM 6-8 chars"), ("chart", "anls", "chart ANLS"),
            ("caption", "cider", "caption CIDEr-D"), ("video", "vqa_acc", "video (motion) acc"))
TOKENIZER_FILES = ("qwen.tiktoken", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                   "video_preprocessor_config.json", "chat_template.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_hashes(root: Path, recipes: list[str]) -> dict[str, str]:
    return {r: sha256(root / r) for r in recipes}


def stage_table(evals: dict[str, dict]) -> str:
    """Markdown: one row per headline metric (EN / ZH beside the total), one column per stage."""
    stages = list(evals)
    lines = ["| metric | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
    for row, metric, label in HEADLINE:
        cells = []
        for s in stages:
            summ = evals[s]["summary"]
            val = summ.get(row, {}).get(metric)
            en, zh = (summ.get(f"{row}/{lang}", {}).get(metric) for lang in ("en", "zh"))
            # summaries hold fractions; like eval.md, percentages except CIDEr
            fmt = (lambda v: f"{v:.3f}") if metric == "cider" else (lambda v: f"{100 * v:.1f}")
            cells.append("" if val is None else f"{fmt(val)} (en {fmt(en)} / zh {fmt(zh)})"
                         if en is not None and zh is not None else fmt(val))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any("blind" in evals[s] for s in stages):  # the blind-baseline verdict of eval/runner.py
        cells = []
        for s in stages:
            v = evals[s].get("blind", {}).get("verdict")
            cells.append(f"{v['uses_image']} ({v['tasks_using_image']} of {v['image_tasks']} tasks)" if v else "")
        lines.append("| uses the image (real beats blank and another image) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _curves(run: Path) -> list[tuple[str, list[float], list[float], list[float], list[float]]]:
    """Per stage: (name, train minutes, train loss, val minutes, val loss), minutes continuing across stages."""
    out, offset = [], 0.0
    for s in STAGES:
        path = run / s / "metrics.csv"
        if not path.is_file():
            continue
        rows = list(csv.DictReader(path.open()))
        tr = [(float(r["elapsed_s"]) / 60 + offset, float(r["loss"])) for r in rows if r["split"] == "train"]
        va = [(float(r["elapsed_s"]) / 60 + offset, float(r["loss"])) for r in rows if r["split"] == "val"]
        out.append((s, [t for t, _ in tr], [v for _, v in tr], [t for t, _ in va], [v for _, v in va]))
        offset = max([offset, *(t for t, _ in tr), *(t for t, _ in va)])
    return out


def plot(run: Path, evals: dict[str, dict], dest: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, tx, ty, vx, vy in _curves(run):
        line, = a.plot(tx, ty, lw=0.8, label=f"{name} train")
        if vx:
            a.plot(vx, vy, "o--", color=line.get_color(), ms=3, label=f"{name} val")
    a.set(xlabel="training wall clock (min, 2 CPU cores)", ylabel="loss (per target token)", yscale="log",
          title="learning curves")
    a.legend(fontsize=7)
    stages = list(evals)
    for row, metric, label in HEADLINE:
        if metric in ("cider",):
            continue
        ys = [100 * evals[s]["summary"].get(row, {}).get(metric, float("nan")) for s in stages]
        b.plot(range(len(stages)), ys, "o-", label=label)
    b.set_xticks(range(len(stages)), [s.split("_")[0] for s in stages])
    b.set(ylabel="held-out test score (%)", ylim=(0, 100), title="what each stage adds")
    b.legend(fontsize=7)
    fig.tight_layout()
    path = dest / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_line(folder: str | Path) -> str | None:
    """One plain sentence of a shipped model's measured held-out accuracy, each figure beside its blank-image
    baseline (from its eval.json); None when the folder has no report."""
    path = Path(folder) / "eval.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    summary, tasks = report["summary"], report.get("blind", {}).get("tasks", {})
    blank = report.get("blind", {}).get("summary", {}).get("blank", {})
    parts = []
    for row, metric, label in HEADLINE:
        v = summary.get(row, {}).get(metric)
        if v is None:
            continue
        b = blank.get(row, {}).get(metric)
        fmt = (lambda x: f"{x:.2f}") if metric == "cider" else (lambda x: f"{100 * x:.0f}%")
        parts.append(f"{label} {fmt(v)}" + (f" (blank image {fmt(b)})" if b is not None else ""))
    n = summary.get("vqa", {}).get("n")
    verdict = report.get("blind", {}).get("verdict", {}).get("uses_image")
    line = (f"measured on held-out generated images ({n} questions per task, greedy): " + ", ".join(parts)
            + (f"; uses the image: {verdict} ({sum(t['uses_image'] for t in tasks.values())} of {len(tasks)} "
               "tasks)" if verdict else "") + ".")
    probe = Path(folder) / "probe.json"
    plain = json.loads(probe.read_text()).get("plain") if probe.is_file() else None
    if plain:
        line += (" On a plain render (one large square on white, \"What color is the square?\") it names the colour "
                 f"{plain['en']['right']}/{plain['en']['of']} in English, {plain['zh']['right']}/{plain['zh']['of']} "
                 "in Chinese.")
    return line


def generation_config(config: dict) -> dict:
    """Greedy defaults for the shipped checkpoint, as its family states them."""
    from qwenvl import families

    return families.for_model_type(config.get("model_type")).generation_config(config)


def write_probe(folder: Path, spec: dict) -> dict:
    """Run the blank-image probe (eval/probe.py) on the model in `folder` and write folder/probe.json with
    the margin the shipped-model test holds it to, and the plain-render colour check's answers."""
    import tempfile

    import qwenvl
    from qwenvl.eval.probe import plain_colour_check, recorded_margin, run_probe

    pipe = qwenvl.load(str(folder), dtype="float32")
    with tempfile.TemporaryDirectory() as work:
        report = run_probe(pipe, spec, work)
    report["margin"] = recorded_margin(report)
    report["plain"] = plain_colour_check(pipe, spec["image_size"])
    (folder / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def ship(run: str | Path, dest: str | Path, recipes: list[str], root: str | Path = ".",
         probe: dict | None = None) -> Path:
    from qwenvl.weights import load_model, save_model

    run, dest, root = Path(run), Path(dest), Path(root)
    done = [s for s in STAGES if (run / s / "final").is_dir()]
    if not done:
        raise FileNotFoundError(f"no {run}/<stage>/final for any of {STAGES}")
    final = run / done[-1] / "final"
    evals = {s: json.loads((run / "eval" / f"{s}.json").read_text()) for s in done
             if (run / "eval" / f"{s}.json").is_file()}
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(load_model(final, torch.float32), tmp, dtype=torch.bfloat16)
    for f in (*TOKENIZER_FILES, "generation_config.json"):
        if (final / f).is_file():
            shutil.copy2(final / f, tmp / f)
    if not (tmp / "generation_config.json").is_file():
        gen = generation_config(json.loads((tmp / "config.json").read_text()))
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if done[-1] in evals:
        (tmp / "eval.json").write_text(json.dumps(evals[done[-1]], indent=1, ensure_ascii=False) + "\n")
        from qwenvl.eval.runner import report_markdown

        (tmp / "eval.md").write_text(report_markdown(evals[done[-1]]))  # + blind baselines when evaluated
    if evals:
        (tmp / "stages.md").write_text(stage_table(evals))
        plot(run, evals, tmp)
    (tmp / "recipes.sha256.json").write_text(json.dumps(recipe_hashes(root, recipes), indent=2) + "\n")
    if probe is not None:
        write_probe(tmp, probe)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qwenvl.train.ship", description=__doc__.splitlines()[0])
    p.add_argument("run", help="folder holding <stage>/final, <stage>/metrics.csv and eval/<stage>.json")
    p.add_argument("dest")
    p.add_argument("--recipe", action="append", default=[], help="recipe files to hash (repeatable)")
    p.add_argument("--probe", default=None, help='blank-image probe spec as JSON, e.g. \'{"seed": 5, '
                   '"image_size": 140, "family": "qwen2_5_vl", "n": 16}\' (eval/probe.py); writes probe.json')
    a = p.parse_args(argv)
    print(ship(a.run, a.dest, a.recipe, probe=json.loads(a.probe) if a.probe else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
