"""The eval runner end to end on generated data: a model that answers with the references scores 100%; the
blind baselines (blank image, another sample's image) tell a model that reads the image from one that does not."""

from __future__ import annotations

import hashlib
import json

import pytest

import qwenvl
from qwenvl.data import generate, load_records
from qwenvl.engine.engine import Engine
from qwenvl.engine.scheduler import Generation
from qwenvl.eval.runner import derangement_shift, evaluate, main_eval, markdown_table


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
    report = evaluate(pipe, records, batch_size=4, progress=False, likelihood=False, blind=False)
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
    blank_rows = report["blind"]["rows"]["blank"]
    assert len(blank_rows) == len(records) and any("mc_acc" in r["scores"] for r in blank_rows)


def test_derangement_shift_leaves_no_sample_its_own_image():
    assert derangement_shift(list("abcd")) == 1
    assert derangement_shift(list("aabc")) == 2  # k 1 would hand sample 0 the same picture (a -> a)
    assert derangement_shift(list("a")) is None and derangement_shift(list("aa")) is None
    keys = list("aabbbcdde")
    k = derangement_shift(keys)
    assert all(keys[(i + k) % len(keys)] != keys[i] for i in range(len(keys)))


@pytest.fixture(scope="module")
def shipped():
    return qwenvl.load("qwenvl-tiny-qwen-vl", dtype="float32")  # v1, like the records below


@pytest.fixture(scope="module")
def v1_data(tmp_path_factory):
    """Generated v1 test records of five image tasks, 6 each, plus one text-only record (task "text")."""
    root = tmp_path_factory.mktemp("blind")
    generate(root, {"vqa": 6, "count": 6, "grounding": 6, "ocr": 6, "caption": 6}, seed=3, splits=(0.0, 0.0, 1.0),
             image_size=140, family="qwen_vl", progress=False)
    records = list(load_records(root / "test.jsonl"))
    text = json.loads(json.dumps(records[0]))
    text.update(id="text-0", task="text")
    for m in text["messages"]:
        m["content"] = [p for p in m["content"] if p["type"] == "text"]
    with open(root / "test.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(text, ensure_ascii=False) + "\n")
    return root / "test.jsonl", [*records, text]


def test_blind_columns_in_the_report_of_the_shipped_model(shipped, v1_data, tmp_path, monkeypatch):
    """`qwenvl eval` on the shipped tiny model: the JSON and the markdown carry real / blank / other per image
    task and the verdict line; the text-only record gets no blind pass; --no-blind drops all of it."""
    monkeypatch.setattr(qwenvl, "load", lambda *a, **k: shipped)
    path, records = v1_data
    out = tmp_path / "eval.json"
    assert main_eval(["qwenvl-tiny", str(path), "--out", str(out), "--max-new-tokens", "3", "--no-likelihood",
                      "--limit", "3"]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["vqa"]["n"] == 3 and report["summary"]["text"]["n"] == 1  # the old keys stay
    blind = report["blind"]
    assert set(blind["tasks"]) == {"vqa", "count", "grounding", "ocr", "caption"}  # not "text"
    for task, t in blind["tasks"].items():
        assert t["n"] == 3 and t["n_other"] == 3 and t["shift"] == 1, (task, t)
        assert all(isinstance(t[k], float) for k in ("real", "blank", "other")), (task, t)
    assert blind["tasks"]["grounding"]["metric"] == "acc_iou50" and blind["tasks"]["caption"]["metric"] == "cider"
    assert len(blind["rows"]["blank"]) == len(blind["rows"]["other"]) == 15
    assert blind["summary"]["blank"]["vqa"]["n"] == 3 and "text" not in blind["summary"]["blank"]
    assert report["uses_image"].startswith("uses the image: ") and report["uses_image"] == blind["verdict"]["line"]
    md = out.with_suffix(".md").read_text()
    assert "| vqa |" in md and "blank (mid-grey RGB(128, 128, 128))" in md and "uses the image: " in md
    assert "| caption | cider | 3 |" in md

    bare = tmp_path / "bare.json"
    assert main_eval(["qwenvl-tiny", str(path), "--out", str(bare), "--max-new-tokens", "2", "--no-likelihood",
                      "--limit", "1", "--no-blind"]) == 0
    assert "blind" not in json.loads(bare.read_text()) and "uses the image" not in bare.with_suffix(".md").read_text()


def _pixels_key(inp) -> str:
    return hashlib.sha1(inp.image_pixels.numpy().tobytes()).hexdigest() if inp.image_pixels is not None else ""


@pytest.mark.parametrize("reads", [True, False], ids=["reads_the_image", "ignores_the_image"])
def test_verdict_follows_whether_the_answer_depends_on_the_image(shipped, v1_data, monkeypatch, reads):
    """A fake model that answers by looking its (preprocessed) pixels up in a table of the real images'
    references is caught using the image; one that answers the same from the text alone (perfectly) is not."""
    _, records = v1_data
    records = records[:-1]
    refs = [r["messages"][-1]["content"][0]["text"] for r in records]
    prepared = [shipped.prepare(r["messages"][:-1]) for r in records]
    if reads:
        table = {_pixels_key(i): a for i, a in zip(prepared, refs, strict=True)}
        assert len(table) == len(records)  # every picture is its own
        answer = lambda inp: table.get(_pixels_key(inp), "nothing")
    else:
        table = {tuple(i.input_ids): a for i, a in zip(prepared, refs, strict=True)}
        answer = lambda inp: table.get(tuple(inp.input_ids), "nothing")

    def fake(engine, inputs, params):
        return [Generation(shipped.processor.tokenizer.encode(answer(i)), "stop", len(i.input_ids)) for i in inputs]

    monkeypatch.setattr(Engine, "generate_batch", fake)
    report = evaluate(shipped, records, batch_size=4, progress=False, likelihood=False)
    tasks = report["blind"]["tasks"]
    assert set(tasks) == {"vqa", "count", "grounding", "ocr", "caption"}
    if reads:
        assert report["blind"]["verdict"]["uses_image"] == "yes", report["uses_image"]
        assert report["uses_image"].startswith("uses the image: yes (real beats blank and another sample's image "
                                               "on 5 of 5 image tasks")
        for task, t in tasks.items():
            assert t["uses_image"] and t["real"] > t["blank"] and t["real"] > t["other"], (task, t)
        by_id = dict(zip((r["id"] for r in records), refs, strict=True))
        for row in report["blind"]["rows"]["other"]:  # another sample's picture -> that sample's answer
            assert row["pred"] == shipped.processor.decode(shipped.processor.tokenizer.encode(by_id[row["partner"]]))
    else:
        assert report["blind"]["verdict"]["uses_image"] == "no", report["uses_image"]
        assert report["uses_image"].startswith("uses the image: no (real beats blank and another sample's image "
                                               "on 0 of 5 image tasks")
        for task, t in tasks.items():
            assert t["real"] == t["blank"] == t["other"] and not t["uses_image"], (task, t)
        assert tasks["vqa"]["real"] == 1.0  # it answers well: the blind columns, not the score, expose it
