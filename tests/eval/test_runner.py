"""The eval runner end to end on generated data: a model that answers with the references scores 100%."""

from __future__ import annotations

import qwenvl
from qwenvl.data import generate, load_records
from qwenvl.engine.engine import Engine
from qwenvl.engine.scheduler import Generation
from qwenvl.eval.runner import evaluate, markdown_table


def test_reference_answers_score_full_marks(tiny_ckpt, tmp_path, monkeypatch):
    folder, _ = tiny_ckpt("qwen2_vl")
    pipe = qwenvl.load(folder)
    generate(tmp_path, {"vqa": 6, "count": 6, "ocr": 6, "grounding": 6, "caption": 6}, seed=1,
             splits=(0.0, 0.0, 1.0), image_size=112, family="qwen2_vl", progress=False)
    records = list(load_records(tmp_path / "test.jsonl"))
    answers = iter([r["messages"][-1]["content"][0]["text"] for r in records])

    def oracle(engine, inputs, params):  # the generator's own answers, as token ids
        return [Generation(pipe.processor.tokenizer.encode(next(answers)), "stop", len(i.input_ids))
                for i in inputs]

    monkeypatch.setattr(Engine, "generate_batch", oracle)
    report = evaluate(pipe, records, batch_size=4, progress=False, likelihood=False)
    summary = report["summary"]
    for task, metric in (("vqa", "vqa_acc"), ("count", "vqa_acc"), ("grounding", "acc_iou50")):
        assert summary[task][metric] == 1.0, (task, summary[task])
    assert summary["ocr"]["exact_match"] == 1.0 and summary["ocr"]["anls"] == 1.0
    assert summary["caption"]["cider"] > 1.0
    assert "| vqa |" in markdown_table(summary)


def test_real_model_runs_with_likelihood(tiny_ckpt, tmp_path):
    folder, _ = tiny_ckpt("qwen2_5_vl")
    pipe = qwenvl.load(folder)
    generate(tmp_path, {"chart": 4, "vqa": 4}, seed=2, splits=(0.0, 0.0, 1.0), image_size=112,
             family="qwen2_vl", progress=False)
    records = list(load_records(tmp_path / "test.jsonl"))
    report = evaluate(pipe, records, batch_size=3, max_new_tokens=4, progress=False)
    assert len(report["rows"]) == len(records)
    assert any("mc_acc" in r["scores"] for r in report["rows"])
    assert all(0.0 <= v <= 1.0 for r in report["rows"] for v in r["scores"].values())
