"""SFT data: record formats, relative media paths, skip accounting, (seed, epoch) order, resume, mixtures."""

from __future__ import annotations

import json
import warnings
from itertools import islice

import numpy as np
import pytest
from PIL import Image

from qwenvl.families.qwen_vl import v1_from_hf_dict
from qwenvl.processing.processor_v1 import QwenV1Processor
from qwenvl.processing.tokenizer_v1 import QwenV1Tokenizer
from qwenvl.train.batch import IGNORE
from qwenvl.train.data import (
    Mixture,
    SFTDataset,
    SkippedSampleWarning,
    TextDataset,
    convert,
    iter_texts,
    linear_curriculum,
    read_records,
)
from qwenvl.train.tokenizer_train import train_ranks
from tests.train.test_masks import V1_CONFIG, qwen2_processor
from tests.train.test_tokenizer_train import corpus


def qa(rid: str, task: str, question, answer: str) -> dict:
    return {"id": rid, "task": task, "lang": "en", "meta": {},
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def supervised_text(tok, ex) -> str:
    return tok.decode([t for t, lab in zip(ex.inputs.input_ids, ex.labels, strict=True) if lab != IGNORE])


@pytest.fixture(scope="module")
def proc2(tmp_path_factory):
    return qwen2_processor(tmp_path_factory.mktemp("tok2"))


@pytest.fixture(scope="module")
def proc1(tmp_path_factory):
    tok = QwenV1Tokenizer.from_file(train_ranks(corpus(), 400, tmp_path_factory.mktemp("v1") / "qwen.tiktoken"))
    return QwenV1Processor(v1_from_hf_dict(V1_CONFIG), tok)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """data/train.jsonl (ours + OpenAI parts), data/official.json; images under data/imgs/."""
    root = tmp_path_factory.mktemp("data")
    (root / "imgs").mkdir()
    Image.fromarray(np.full((56, 56, 3), 200, np.uint8)).save(root / "imgs" / "good.png")
    Image.fromarray(np.full((56, 84, 3), 60, np.uint8)).save(root / "imgs" / "wide.png")
    (root / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    records = [
        qa("ok-0", "caption", [{"type": "image", "image": "imgs/good.png"}, {"type": "text", "text": "Describe."}],
           "A grey square."),
        qa("ok-1", "vqa", [{"type": "image_url", "image_url": {"url": "imgs/wide.png"}},
                           {"type": "text", "text": "Is it wide?"}], "Yes."),
        qa("missing", "vqa", [{"type": "image", "image": "imgs/missing.png"}, {"type": "text", "text": "?"}], "No."),
        qa("corrupt", "vqa", [{"type": "image", "image": "imgs/corrupt.png"}, {"type": "text", "text": "?"}], "No."),
        qa("long", "caption", "word " * 400, "Too long."),
        {"id": "no-answer", "task": "vqa", "messages": [{"role": "user", "content": "hello?"}]},
        *(qa(f"t-{k}", "caption" if k % 2 else "vqa", f"Question {k}?", f"Answer {k}.") for k in range(4)),
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    official = [{"id": "o-0", "conversations": [
        {"from": "user", "value": "Picture 1: <img>imgs/good.png</img>\nWhere is the square?"},
        {"from": "assistant", "value": "<ref>the square</ref><box>(1,2),(3,4)</box>"},
        {"from": "user", "value": "Thanks."}, {"from": "assistant", "value": "You are welcome."}]}]
    (root / "official.json").write_text(json.dumps(official))
    return root


def text_records(n: int, task: str = "vqa") -> list[dict]:
    return [qa(f"{task}-{k}", task, f"{task} question {k}?", f"{task} answer {k}.") for k in range(n)]


# ------------------------------------------------------------------------------- formats and skips


def test_bad_samples_are_counted_warned_skipped_and_remembered(proc2, data_dir):
    ds = SFTDataset(data_dir / "train.jsonl", proc2, max_len=200, shuffle=False)
    with pytest.warns(SkippedSampleWarning) as caught:
        exs = list(ds)
    assert len(exs) == 6 and len(ds) == 10
    assert ds.skipped == {"missing_image": 1, "bad_image": 1, "too_long": 1, "invalid": 1}
    text = "\n".join(str(w.message) for w in caught)
    assert "record missing: missing_image" in text and "imgs/missing.png" in text
    assert "record corrupt: bad_image" in text and "imgs/corrupt.png" in text
    assert "record long: too_long" in text and "record no-answer: invalid" in text
    with warnings.catch_warnings():  # later epochs skip the known-bad records silently
        warnings.simplefilter("error")
        assert len(list(ds)) == 6
    assert sum(ds.skipped.values()) == 4 and ds.report().startswith("10 records, skipped 4")
    assert supervised_text(proc2.tokenizer, exs[0]) == "A grey square.<|im_end|>"


def test_drop_media_gives_the_text_only_chat_for_stage0(proc1, proc2, data_dir):
    """Stage 0 learns the chat template and the answers with the images removed (none are opened)."""
    ds = SFTDataset(data_dir / "train.jsonl", proc2, max_len=200, shuffle=False, drop_media=True)
    with pytest.warns(SkippedSampleWarning):
        exs = list(ds)
    assert ds.skipped == {"too_long": 1, "invalid": 1}  # missing / corrupt images no longer matter
    assert len(exs) == 8 and all(ex.inputs.image_pixels is None for ex in exs)
    tok = proc2.tokenizer
    assert tok.decode(exs[0].inputs.input_ids) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                                   "<|im_start|>user\nDescribe.<|im_end|>\n"
                                                   "<|im_start|>assistant\nA grey square.<|im_end|>\n")
    assert supervised_text(tok, exs[0]) == "A grey square.<|im_end|>"
    (v1,) = list(SFTDataset(data_dir / "official.json", proc1, max_len=200, drop_media=True))
    assert "<img>" not in proc1.tokenizer.decode(v1.inputs.input_ids)
    assert supervised_text(proc1.tokenizer, v1) == ("<ref>the square</ref><box>(1,2),(3,4)</box><|im_end|>"
                                                    "You are welcome.<|im_end|>")


def test_relative_paths_resolve_against_the_file_folder(proc2, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = SFTDataset(data_dir / "train.jsonl", proc2, max_len=200, shuffle=False,
                    keep=lambda r: r["id"] in ("ok-0", "ok-1"))
    ok0, ok1 = list(ds)
    assert ok0.inputs.image_grid == [(1, 4, 4)] and ok1.inputs.image_grid == [(1, 4, 6)]  # OpenAI image_url part
    # in-memory records resolve against image_root
    ds = SFTDataset([json.loads((data_dir / "train.jsonl").read_text().splitlines()[0])], proc2, 200,
                    image_root=data_dir)
    assert list(ds)[0].inputs.image_grid == [(1, 4, 4)]


def test_official_qwen_vl_format(proc1, proc2, data_dir):
    msgs = convert(next(read_records(data_dir / "official.json")))["messages"]
    assert msgs[0]["content"] == [{"type": "image", "image": str(data_dir / "imgs" / "good.png")},
                                  {"type": "text", "text": "Where is the square?"}]
    (ex1,) = list(SFTDataset(data_dir / "official.json", proc1, max_len=1000))
    tok = proc1.tokenizer
    assert "Picture 1: <img>" in ex1.inputs.text and "</img>\nWhere is the square?" in ex1.inputs.text
    assert len(tok.image_spans(ex1.inputs.input_ids)) == 1 and ex1.inputs.image_pixels.shape[0] == 1
    assert supervised_text(tok, ex1) == \
        "<ref>the square</ref><box>(1,2),(3,4)</box><|im_end|>You are welcome.<|im_end|>"
    (ex2,) = list(SFTDataset(data_dir / "official.json", proc2, max_len=1000))
    assert ex2.inputs.image_grid == [(1, 4, 4)]


# ------------------------------------------------------------------------------- order and resume


def test_order_is_seeded_per_epoch(proc2):
    recs = text_records(12)
    a = SFTDataset(recs, proc2, 200, seed=3)
    b = SFTDataset(recs, proc2, 200, seed=3)
    assert a.order(0) == b.order(0) and a.order(1) == b.order(1)
    assert a.order(0) != a.order(1) and sorted(a.order(1)) == list(range(12))
    assert SFTDataset(recs, proc2, 200, seed=4).order(0) != a.order(0)
    first = [ex.inputs.text for ex in a]
    assert a.state_dict()["epoch"] == 0 and a.state_dict()["index"] == 12
    second = [ex.inputs.text for ex in a]  # the next epoch, in another order
    assert a.state_dict()["epoch"] == 1 and sorted(first) == sorted(second) and first != second


def test_resume_continues_exactly(proc2):
    recs = text_records(10)
    recs[4] = {"id": "broken", "messages": "not a list"}  # skipped records do not disturb the position
    full = SFTDataset(recs, proc2, 200, seed=1)
    with pytest.warns(SkippedSampleWarning):
        want = [ex.inputs.text for ex in islice(full.stream(), 25)]
    run = SFTDataset(recs, proc2, 200, seed=1)
    with pytest.warns(SkippedSampleWarning):
        got = [ex.inputs.text for ex in islice(run.stream(), 11)]
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint as JSON
    assert state["epoch"] == 1
    resumed = SFTDataset(recs, proc2, 200, seed=1)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        got += [ex.inputs.text for ex in islice(resumed.stream(), 14)]
    assert got == want
    with pytest.raises(ValueError, match="seed"):
        SFTDataset(recs, proc2, 200, seed=2).load_state_dict(state)


# ------------------------------------------------------------------------------- mixtures, stage 0


def test_mixture_weights_curriculum_and_resume(proc2):
    recs = text_records(5, "vqa") + text_records(7, "caption")
    sources = SFTDataset.by_task(recs, proc2, 200, seed=0)
    assert sorted(sources) == ["caption", "vqa"] and len(sources["caption"]) == 7

    def tasks(mix, n):
        return [ex.inputs.text.split("user\n")[-1].split()[0] for ex in islice(mix, n)]

    assert set(tasks(Mixture(sources, {"caption": 1.0, "vqa": 0.0}), 20)) == {"caption"}
    switch = Mixture(SFTDataset.by_task(recs, proc2, 200), lambda step: {"vqa": 1.0} if step < 6 else {"caption": 1.0})
    assert tasks(switch, 12) == ["vqa"] * 6 + ["caption"] * 6
    ramp = linear_curriculum({"vqa": 1.0}, {"caption": 1.0}, steps=10)
    assert ramp(0) == {"vqa": 1.0, "caption": 0.0} and ramp(5) == {"vqa": 0.5, "caption": 0.5}

    ref = Mixture(SFTDataset.by_task(recs, proc2, 200), {"vqa": 1.0, "caption": 2.0}, seed=7)
    want = tasks(ref, 30)
    assert 5 < want.count("vqa") < 20
    run = Mixture(SFTDataset.by_task(recs, proc2, 200), {"vqa": 1.0, "caption": 2.0}, seed=7)
    got = tasks(run, 13)
    resumed = Mixture(SFTDataset.by_task(recs, proc2, 200), {"vqa": 1.0, "caption": 2.0}, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(run.state_dict())))
    assert got + tasks(resumed, 17) == want


def test_text_dataset_for_stage0(proc1, proc2, data_dir):
    ds = TextDataset(data_dir / "train.jsonl", proc2, max_len=200, shuffle=False)
    with pytest.warns(SkippedSampleWarning, match="too_long"):
        exs = list(ds)
    assert len(exs) == 9 and ds.skipped == {"too_long": 1}  # images are not needed, so only "long" fails
    ex = exs[0]
    tok = proc2.tokenizer
    assert tok.decode(ex.inputs.input_ids) == "Describe.\nA grey square.<|endoftext|>"
    assert ex.labels == ex.inputs.input_ids and ex.inputs.positions.shape == (3, len(ex))
    # v1 answers keep their grounding tags special, as in SFT; questions are plain text
    (doc,) = list(TextDataset(data_dir / "official.json", proc1, max_len=200))
    tok1 = proc1.tokenizer
    assert tok1.decode(doc.inputs.input_ids) == ("Where is the square?\n<ref>the square</ref><box>(1,2),(3,4)</box>\n"
                                                 "Thanks.\nYou are welcome.<|endoftext|>")
    assert tok1.token_id("<ref>") in doc.inputs.input_ids and doc.labels == doc.inputs.input_ids
    (v1,) = list(TextDataset.from_texts(["图中有3个红色的圆形。"], proc1, max_len=50))
    assert tok1.decode(v1.inputs.input_ids) == "图中有3个红色的圆形。<|endoftext|>"
    assert v1.inputs.positions.tolist() == list(range(len(v1)))
    texts = list(iter_texts(data_dir / "train.jsonl"))
    assert texts[:4] == ["Describe.", "A grey square.", "Is it wide?", "Yes."]
