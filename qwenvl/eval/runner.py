"""`qwenvl eval MODEL DATA`: generate answers for a JSONL split and score them per task and language.

Metric per question type (records carry `meta.qtype`, `meta.answers`, `meta.box`, `meta.ocr_text`):
  caption -> CIDEr-D (corpus);  read (OCR) -> exact match and ANLS, split by text length (3-5 / 6-8);
  a record with one `meta.box` -> Acc@IoU>=0.5 through the version-aware box codec;  markdown -> ANLS;
  anything else -> VQA accuracy (normalised exact match for single answers);
  records with `meta.choices` additionally get multiple choice scored by likelihood.
Blind baselines (on by default, `--no-blind` skips them; they triple the cost): every record with an
image or video is answered twice more, once with each image (video frame) replaced by a mid-grey
RGB(128, 128, 128) image of the same size, once with another sample's image: sample i of a task gets the
images of sample (i + k) mod n of the same task (its image records, in file order), k the smallest shift
under which no sample keeps pixels identical to its own, resized to sample i's image sizes. Both go
through the same processor as the real image. Text-only records are not re-run. A task "uses the image"
when its headline metric with the real image beats both baselines by the margin (see `margin_points`).
Output: a JSON report and a markdown table. The last assistant turn of each record is the reference.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwenvl.eval.likelihood import continuation_logprobs
from qwenvl.eval.metrics import anls, cider, exact_match, grounding_hit, vqa_accuracy

BLANK_FILL = (128, 128, 128)  # mid-grey: the middle of the normalised range, neither a white page nor black
BLANK_NAME = "mid-grey RGB(128, 128, 128)"
MARGIN_POINTS = 5.0  # the least real - blind difference (metric x 100) that counts, whatever n is
HEADLINE = ("acc_iou50", "exact_match", "anls", "vqa_acc", "mc_acc", "cider")  # a task's metric: first present


def _prompt(record: dict) -> list[dict]:
    msgs = record["messages"]
    return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else msgs


def _ocr_bucket(text: str) -> str:
    return "3-5" if len(text) <= 5 else "6-8" if len(text) <= 8 else "9+"


def score_record(record: dict, pred: str, family: str, image_size, input_size) -> dict[str, float]:
    meta = record.get("meta", {})
    qtype = meta.get("qtype", "")
    answers = meta.get("answers") or [meta.get("answer", "")]
    if qtype == "caption":
        return {}  # CIDEr is a corpus metric, computed in summarise()
    if meta.get("box") is not None:  # referring expression (or text) -> one box
        return {"acc_iou50": grounding_hit(pred, meta["box"], family, image_size, input_size)}
    if qtype == "read":
        return {"exact_match": exact_match(pred, answers), "anls": anls(pred, answers)}
    if qtype == "markdown":
        return {"anls": anls(pred, answers)}
    return {"vqa_acc": vqa_accuracy(pred, answers)}


def evaluate(pipe, records: list[dict], batch_size: int = 8, max_new_tokens: int = 64,
             likelihood: bool = True, progress: bool = True, blind: bool = True) -> dict[str, Any]:
    """Greedy answers for every record, scored; returns {"rows": [...], "summary": {...}} and, with
    blind, "blind" (see blind_report) and "uses_image" (its verdict line).

    batch_size records are prepared and submitted together to the pipeline's engine (continuously
    batched, up to its slot count), then scored."""
    params = pipe.sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    visual = [i for i, r in enumerate(records) if _sources(r)] if blind else []
    pairs = _derange(records, visual) if blind else {}
    bar = _bar(len(records) + len(visual) + len(pairs), progress)

    def run(items: list, make: Callable[[Any], dict]) -> list[dict]:
        return _answer(pipe, items, make, params, batch_size, likelihood, bar)

    rows = run(records, lambda r: r)
    report: dict[str, Any] = {"rows": rows, "summary": summarise(rows)}
    if blind:
        blank = dict(zip(visual, run(visual, lambda i: blank_record(records[i])), strict=True))
        other = dict(zip(pairs, run(list(pairs), lambda i: other_record(records[i], records[pairs[i][0]])),
                         strict=True))
        report["blind"] = blind_report(rows, blank, other, pairs)
        report["uses_image"] = report["blind"]["verdict"]["line"]
    bar.close()
    return report


def _answer(pipe, items: list, make: Callable[[Any], dict], params, batch_size: int, likelihood: bool,
            bar) -> list[dict]:
    """Rows (pred, answers, scores) for make(item) of every item, batch_size records at a time."""
    rows: list[dict] = []
    for start in range(0, len(items), batch_size):
        chunk = [make(it) for it in items[start:start + batch_size]]
        inputs = [pipe.prepare(_prompt(r)) for r in chunk]
        outs = pipe.engine.generate_batch(inputs, params)
        for rec, inp, out in zip(chunk, inputs, outs, strict=True):
            rows.append(_row(pipe, rec, inp, out, likelihood))
        bar.update(len(chunk))
    return rows


def _row(pipe, rec: dict, inp, out, likelihood: bool) -> dict:
    raw = pipe.processor.decode(out.token_ids, skip_special=False)
    pred = pipe.processor.decode(out.token_ids)
    size = inp.image_sizes[-1] if inp.image_sizes else None
    in_size = (pipe.processor.input_sizes(inp) or [None])[-1]
    meta = rec.get("meta", {})
    row = {"id": rec.get("id"), "task": rec.get("task"), "lang": rec.get("lang"), "qtype": meta.get("qtype"),
           "pred": pred, "answers": meta.get("answers") or [meta.get("answer")],
           "scores": score_record(rec, raw if meta.get("box") is not None else pred, pipe.family, size, in_size)}
    if meta.get("qtype") == "read":
        row["ocr_len"] = _ocr_bucket(meta.get("ocr_text") or row["answers"][0])
    if likelihood and meta.get("choices") and meta.get("answer") in meta["choices"]:
        conts = [pipe.processor.tokenizer.encode(c, allow_special=False) for c in meta["choices"]]
        lp = continuation_logprobs(pipe.model, inp, conts)
        row["scores"]["mc_acc"] = float(meta["choices"][lp.index(max(lp))] == meta["answer"])
    return row


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{"task/lang": {metric: mean, "n": count}}, plus "task" over both languages and OCR length buckets."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        keys = [r["task"], f"{r['task']}/{r['lang']}"]
        if "ocr_len" in r:
            keys += [f"{r['task']}[{r['ocr_len']}]", f"{r['task']}[{r['ocr_len']}]/{r['lang']}"]
        for k in keys:
            for m, v in r["scores"].items():
                acc[k][m].append(v)
            acc[k]["n"].append(1)
    out = {k: {m: (sum(v) if m == "n" else sum(v) / len(v)) for m, v in ms.items()} for k, ms in acc.items()}
    captions = [r for r in rows if r["qtype"] == "caption"]
    for key, sel in _caption_groups(captions).items():
        out.setdefault(key, {"n": len(sel)})["cider"] = _cider(sel)
    return dict(sorted(out.items()))


def _cider(rows: list[dict]) -> float:
    score, _ = cider({r["id"]: r["pred"] for r in rows}, {r["id"]: [a for a in r["answers"] if a] for r in rows})
    return score


def _caption_groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["task"]].append(r)
        groups[f"{r['task']}/{r['lang']}"].append(r)
    return groups


# ----------------------------------------------------------------------------------------------
# blind baselines: the same questions with a blank image and with another sample's image


def _sources(record: dict) -> list[tuple[int, int, int | None]]:
    """Where the record's images are: (message, part, frame or None) of every image part and every frame
    of a video given as a frame list (a video file is not re-run blind). [] for a text-only record."""
    out: list[tuple[int, int, int | None]] = []
    for mi, msg in enumerate(_prompt(record)):
        content = msg.get("content")
        for pi, part in enumerate(content if isinstance(content, list) else []):
            if part.get("type") == "image" and "image" in part:
                out.append((mi, pi, None))
            elif part.get("type") == "video" and isinstance(part.get("video"), list | tuple):
                out.extend((mi, pi, fi) for fi in range(len(part["video"])))
    return out


def _get(record: dict, where: tuple[int, int, int | None]):
    mi, pi, fi = where
    part = record["messages"][mi]["content"][pi]
    return part["image"] if fi is None else part["video"][fi]


def _replaced(record: dict, images: list) -> dict:
    """A copy of the record whose images (in _sources order) are `images` (PIL); text and meta unchanged."""
    rec = copy.deepcopy({k: v for k, v in record.items() if k != "messages"})
    rec["messages"] = [dict(m, content=[dict(p) for p in m["content"]]) if isinstance(m.get("content"), list)
                       else dict(m) for m in record["messages"]]
    for (mi, pi, fi), img in zip(_sources(record), images, strict=True):
        part = rec["messages"][mi]["content"][pi]
        if fi is None:
            part["image"] = img
        else:
            part["video"] = list(part["video"])
            part["video"][fi] = img
    return rec


def _load(src):
    from qwenvl.processing.image import load_image

    return load_image(src)


def blank_record(record: dict) -> dict:
    """The record with every image (frame) replaced by a BLANK_FILL image of the same size."""
    from PIL import Image

    return _replaced(record, [Image.new("RGB", _load(_get(record, w)).size, BLANK_FILL) for w in _sources(record)])


def other_record(record: dict, partner: dict) -> dict:
    """The record with image m replaced by the partner's image m (cycled when it has fewer), resized to
    the size of the record's own image m, so the token count and box scale stay the record's."""
    from PIL import Image

    theirs = [_get(partner, w) for w in _sources(partner)]
    images = []
    for m, w in enumerate(_sources(record)):
        size, img = _load(_get(record, w)).size, _load(theirs[m % len(theirs)])
        images.append(img if img.size == size else img.resize(size, Image.Resampling.BICUBIC))
    return _replaced(record, images)


def derangement_shift(keys: list) -> int | None:
    """The smallest k in 1..n-1 with keys[(i + k) % n] != keys[i] for every i; None when there is none
    (n < 2, or one image everywhere). Example: keys [a a b c] -> k 1 fails (0 -> 1 is a -> a), k 2 works."""
    n = len(keys)
    return next((k for k in range(1, n) if all(keys[(i + k) % n] != keys[i] for i in range(n))), None)


def _derange(records: list[dict], visual: list[int]) -> dict[int, tuple[int, int]]:
    """{record index: (partner record index, shift k)} per task over its image records in file order."""
    by_task: dict[Any, list[int]] = defaultdict(list)
    for i in visual:
        by_task[records[i].get("task")].append(i)
    out: dict[int, tuple[int, int]] = {}
    for idx in by_task.values():
        keys = [tuple(hashlib.sha1(_load(_get(records[i], w)).tobytes()).hexdigest() for w in _sources(records[i]))
                for i in idx]
        k = derangement_shift(keys)
        if k is not None:
            out.update({i: (idx[(p + k) % len(idx)], k) for p, i in enumerate(idx)})
    return dict(sorted(out.items()))


def _headline(rows: list[dict]) -> str | None:
    if any(r["qtype"] == "caption" for r in rows):
        return "cider"
    present = {m for r in rows for m in r["scores"]}
    return next((m for m in HEADLINE if m in present), None)


def _value(rows: list[dict], metric: str) -> float | None:
    if metric == "cider":
        sel = [r for r in rows if r["qtype"] == "caption"]
        return _cider(sel) if sel else None
    vals = [r["scores"][metric] for r in rows if metric in r["scores"]]
    return sum(vals) / len(vals) if vals else None


def margin_points(real: list[dict], blind: list[dict], metric: str) -> float:
    """The difference (points = metric x 100) real must beat blind by: max(MARGIN_POINTS, 2 standard
    errors of the per-sample paired difference), so a small task needs a larger gap. CIDEr is a corpus
    score with no per-sample values: MARGIN_POINTS alone."""
    d = [100 * (a["scores"][metric] - b["scores"][metric]) for a, b in zip(real, blind, strict=True)
         if metric in a["scores"] and metric in b["scores"]]
    if metric == "cider" or len(d) < 2:
        return MARGIN_POINTS
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    return max(MARGIN_POINTS, 2 * se)


def _compare(real: list[dict], blind: list[dict], metric: str) -> dict[str, float | None]:
    r, b = _value(real, metric), _value(blind, metric)
    gap = None if r is None or b is None else 100 * (r - b)
    margin = margin_points(real, blind, metric)
    return {"real": r, "value": b, "gap": gap, "margin": margin, "beats": gap is not None and gap >= margin}


def blind_report(rows: list[dict], blank: dict[int, dict], other: dict[int, dict],
                 pairs: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """Per task (image records only): the headline metric with the real image, a blank one and another
    sample's, the gaps in points, the margins and whether the task uses the image; plus full summaries of
    the three passes (same keys as "summary"), the blind rows and the verdict."""
    by_task: dict[Any, list[int]] = defaultdict(list)
    for i in blank:
        by_task[rows[i]["task"]].append(i)
    tasks: dict[str, dict] = {}
    for task, idx in sorted(by_task.items(), key=lambda kv: str(kv[0])):
        real = [rows[i] for i in idx]
        metric = _headline(real)
        if metric is None:
            continue
        b = _compare(real, [blank[i] for i in idx], metric)
        oidx = [i for i in idx if i in other]
        o = _compare([rows[i] for i in oidx], [other[i] for i in oidx], metric) if oidx else None
        tasks[str(task)] = {
            "metric": metric, "n": len(idx), "real": b["real"], "blank": b["value"], "other": o and o["value"],
            "n_other": len(oidx), "real_other": o and o["real"], "shift": pairs[oidx[0]][1] if oidx else None,
            "real_minus_blank": b["gap"], "real_minus_other": o and o["gap"], "margin_blank": b["margin"],
            "margin_other": o and o["margin"],
            "uses_image": b["beats"] and (o is None or o["beats"])}
    other_rows = [dict(other[i], partner=rows[pairs[i][0]]["id"]) for i in other]
    return {"blank_fill": BLANK_NAME, "tasks": tasks, "verdict": verdict(tasks),
            "summary": {"real": summarise([rows[i] for i in blank]), "blank": summarise(list(blank.values())),
                        "other": summarise(other_rows)},
            "rows": {"blank": list(blank.values()), "other": other_rows}}


def verdict(tasks: dict[str, dict]) -> dict[str, Any]:
    """yes: at least half of the image tasks use the image (real beats blank AND another sample's image
    by each margin); partly: some but fewer than half; no: none; n/a: no image task was scored."""
    z = len(tasks)
    y = sum(t["uses_image"] for t in tasks.values())
    yb = sum(t["real_minus_blank"] is not None and t["real_minus_blank"] >= t["margin_blank"] for t in tasks.values())
    word = "n/a" if z == 0 else "no" if y == 0 else "yes" if 2 * y >= z else "partly"

    def mean(key: str) -> float | None:
        vals = [t[key] for t in tasks.values() if t[key] is not None]
        return sum(vals) / len(vals) if vals else None

    mb, mo = mean("real_minus_blank"), mean("real_minus_other")
    fmt = (lambda v: "n/a" if v is None else f"{v:+.1f}")
    rule = (f"a task uses the image when its metric with the real image beats both the blank ({BLANK_NAME}) and "
            f"another sample's image by max({MARGIN_POINTS:g} points, 2 standard errors of the paired difference); "
            "yes = at least half of the image tasks")
    line = (f"uses the image: {word} (real beats blank and another sample's image on {y} of {z} image tasks, "
            f"blank alone on {yb}; mean real - blank {fmt(mb)} points, real - other {fmt(mo)} points; "
            f"rule: {rule})")
    return {"uses_image": word, "tasks_using_image": y, "tasks_beating_blank": yb, "image_tasks": z,
            "mean_real_minus_blank": mb, "mean_real_minus_other": mo, "rule": rule, "line": line}


# ----------------------------------------------------------------------------------------------
# tables


def _pct(metric: str, v: float | None) -> str:
    return "" if v is None else f"{v:.3f}" if metric == "cider" else f"{100 * v:.1f}"


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    metrics = sorted({m for v in summary.values() for m in v if m != "n"})
    lines = ["| task | n | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for key, vals in summary.items():
        cells = [_pct(m, vals.get(m)) for m in metrics]
        lines.append(f"| {key} | {int(vals.get('n', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def blind_table(blind: dict[str, Any]) -> str:
    """Markdown: one row per image task, the headline metric real / blank / other and the gaps in points."""
    lines = [f"| task | metric | n | real | blank ({BLANK_NAME}) | other image (shift k) | real - blank | "
             "real - other | uses image |", "|---" * 9 + "|"]
    for task, t in blind["tasks"].items():
        m = t["metric"]
        gap = (lambda g, mg: "" if g is None else f"{g:+.1f} (margin {mg:.1f})")
        other = "" if t["other"] is None else f"{_pct(m, t['other'])} (k {t['shift']}, n {t['n_other']})"
        lines.append(f"| {task} | {m} | {t['n']} | {_pct(m, t['real'])} | {_pct(m, t['blank'])} | {other} | "
                     f"{gap(t['real_minus_blank'], t['margin_blank'])} | "
                     f"{gap(t['real_minus_other'], t['margin_other'])} | {'yes' if t['uses_image'] else 'no'} |")
    return "\n".join(lines) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    """The summary table, then (when the report has blind baselines) the blind table and the verdict line."""
    text = markdown_table(report["summary"])
    if report.get("blind"):
        text += "\n" + blind_table(report["blind"]) + "\n" + report["blind"]["verdict"]["line"] + "\n"
    return text


def _bar(total: int, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="eval", unit="q", disable=not enabled)
    except ImportError:  # tqdm is a train extra
        class _Null:
            def update(self, n): ...
            def close(self): ...
        return _Null()


def main_eval(argv: list[str]) -> int:
    import qwenvl
    from qwenvl.data.formats import load_records

    p = argparse.ArgumentParser(prog="qwenvl eval", description="score a model on a JSONL split")
    p.add_argument("model", nargs="?", default=None, help="checkpoint folder or shipped model name")
    p.add_argument("data", help="a JSONL file (e.g. data/test.jsonl)")
    p.add_argument("--out", default=None, help="report path (.json); a .md table is written beside it")
    p.add_argument("--limit", type=int, default=None, help="at most this many records per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--no-likelihood", action="store_true")
    p.add_argument("--no-blind", action="store_true",
                   help=f"skip the blind baselines (image records re-run with a {BLANK_NAME} image and with "
                        "another sample's image; they triple the cost)")
    args = p.parse_args(argv)
    records, per_task = [], defaultdict(int)
    for r in load_records(args.data):
        if args.limit is None or per_task[r.get("task")] < args.limit:
            per_task[r.get("task")] += 1
            records.append(r)
    pipe = qwenvl.load(args.model, dtype=args.dtype)
    report = evaluate(pipe, records, args.batch_size, args.max_new_tokens, not args.no_likelihood,
                      blind=not args.no_blind)
    table = report_markdown(report)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": str(args.model), "data": os.fspath(args.data), **report}, indent=1,
                                  ensure_ascii=False))
        out.with_suffix(".md").write_text(table)
        print(f"report: {out}", file=sys.stderr)
    return 0
