"""`qwenvl eval MODEL DATA`: generate answers for a JSONL split and score them per task and language.

Metric per question type (records carry `meta.qtype`, `meta.answers`, `meta.box`, `meta.ocr_text`):
  caption -> CIDEr-D (corpus);  read (OCR) -> exact match and ANLS, split by text length (3-5 / 6-8);
  a record with one `meta.box` -> Acc@IoU>=0.5 through the version-aware box codec;  markdown -> ANLS;
  anything else -> VQA accuracy (normalised exact match for single answers);
  records with `meta.choices` additionally get multiple choice scored by likelihood.
Output: a JSON report and a markdown table. The last assistant turn of each record is the reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from qwenvl.eval.likelihood import continuation_logprobs
from qwenvl.eval.metrics import anls, cider, exact_match, grounding_hit, vqa_accuracy


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
             likelihood: bool = True, progress: bool = True) -> dict[str, Any]:
    """Greedy answers for every record, scored; returns {"rows": [...], "summary": {...}}.

    batch_size records are prepared and submitted together to the pipeline's engine (continuously
    batched, up to its slot count), then scored."""
    params = pipe.sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    rows: list[dict] = []
    bar = _bar(len(records), progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        inputs = [pipe.prepare(_prompt(r)) for r in chunk]
        outs = pipe.engine.generate_batch(inputs, params)
        for rec, inp, out in zip(chunk, inputs, outs, strict=True):
            raw = pipe.processor.decode(out.token_ids, skip_special=False)
            pred = pipe.processor.decode(out.token_ids)
            size = inp.image_sizes[-1] if inp.image_sizes else None
            in_size = (pipe.processor.input_sizes(inp) or [None])[-1]
            meta = rec.get("meta", {})
            row = {"id": rec.get("id"), "task": rec.get("task"), "lang": rec.get("lang"),
                   "qtype": meta.get("qtype"), "pred": pred,
                   "answers": meta.get("answers") or [meta.get("answer")],
                   "scores": score_record(rec, raw if meta.get("box") is not None else pred, pipe.family, size,
                                          in_size)}
            if meta.get("qtype") == "read":
                row["ocr_len"] = _ocr_bucket(meta.get("ocr_text") or row["answers"][0])
            if likelihood and meta.get("choices") and meta.get("answer") in meta["choices"]:
                conts = [pipe.processor.tokenizer.encode(c, allow_special=False) for c in meta["choices"]]
                lp = continuation_logprobs(pipe.model, inp, conts)
                row["scores"]["mc_acc"] = float(meta["choices"][lp.index(max(lp))] == meta["answer"])
            rows.append(row)
        bar.update(len(chunk))
    bar.close()
    return {"rows": rows, "summary": summarise(rows)}


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
        score, _ = cider({r["id"]: r["pred"] for r in sel}, {r["id"]: [a for a in r["answers"] if a] for r in sel})
        out.setdefault(key, {"n": len(sel)})["cider"] = score
    return dict(sorted(out.items()))


def _caption_groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["task"]].append(r)
        groups[f"{r['task']}/{r['lang']}"].append(r)
    return groups


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    metrics = sorted({m for v in summary.values() for m in v if m != "n"})
    lines = ["| task | n | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for key, vals in summary.items():
        cells = [f"{100 * vals[m]:.1f}" if m in vals and m != "cider" else
                 (f"{vals[m]:.3f}" if m in vals else "") for m in metrics]
        lines.append(f"| {key} | {int(vals.get('n', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
    args = p.parse_args(argv)
    records, per_task = [], defaultdict(int)
    for r in load_records(args.data):
        if args.limit is None or per_task[r.get("task")] < args.limit:
            per_task[r.get("task")] += 1
            records.append(r)
    pipe = qwenvl.load(args.model, dtype=args.dtype)
    report = evaluate(pipe, records, args.batch_size, args.max_new_tokens, not args.no_likelihood)
    table = markdown_table(report["summary"])
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": str(args.model), "data": args.data, **report}, indent=1,
                                  ensure_ascii=False))
        out.with_suffix(".md").write_text(table)
        print(f"report: {out}", file=sys.stderr)
    return 0
