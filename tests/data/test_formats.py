"""load_records: our JSONL, the official Qwen-VL finetune format (JSON list or JSONL), OpenAI/HF messages;
relative paths resolve against the file's folder; a malformed line names its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl.data import RecordError, load_records, to_finetune
from qwenvl.data.formats import write_jsonl


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


FINETUNE = {
    "id": "identity_0",
    "conversations": [
        {"from": "user", "value": "Picture 1: <img>imgs/a.png</img>\nPicture 2: <img>/abs/b.png</img>\n"
                                  "What differs between them?"},
        {"from": "assistant", "value": "The first has <ref>a cat</ref><box>(10,20),(300,400)</box>."},
        {"from": "user", "value": "Thanks. Picture 3: <img>https://x.org/c.jpg</img>\nAnd this?"},
        {"from": "assistant", "value": "A dog."},
    ],
}


def test_official_finetune_format_json_list(tmp_path: Path) -> None:
    path = tmp_path / "sft.json"
    path.write_text(json.dumps([FINETUNE, {**FINETUNE, "id": "identity_1"}]))
    recs = list(load_records(path))
    assert [r["id"] for r in recs] == ["identity_0", "identity_1"]
    m = recs[0]["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"]
    assert m[0]["content"] == [
        {"type": "image", "image": str(tmp_path / "imgs/a.png")},
        {"type": "image", "image": "/abs/b.png"},
        {"type": "text", "text": "What differs between them?"},
    ]
    assert m[1]["content"] == [{"type": "text", "text": "The first has <ref>a cat</ref><box>(10,20),(300,400)</box>."}]
    assert m[2]["content"] == [{"type": "text", "text": "Thanks. "}, {"type": "image", "image": "https://x.org/c.jpg"},
                               {"type": "text", "text": "And this?"}]
    assert recs[0]["meta"] == {} and recs[0]["task"] is None


def test_finetune_format_as_jsonl_and_llava_placeholders(tmp_path: Path) -> None:
    llava = {"id": "l0", "image": "pic.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A bus."}]}
    recs = list(load_records(_write(tmp_path / "d.jsonl", [FINETUNE, llava])))
    assert recs[1]["messages"][0]["content"] == [{"type": "image", "image": str(tmp_path / "pic.jpg")},
                                                 {"type": "text", "text": "What is it?"}]
    assert recs[1]["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "A bus."}]}


def test_openai_and_hf_messages(tmp_path: Path) -> None:
    rows = [
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x/y.png"}},
                                         {"type": "image_url", "image_url": "data:image/png;base64,AAAA"},
                                         {"type": "text", "text": "Compare."}]},
            {"role": "assistant", "content": "Same."}]},
        {"id": "v", "task": "video", "lang": "zh", "meta": {"answer": "向左"}, "messages": [
            {"role": "user", "content": [{"type": "video", "video": ["f0.png", "f1.png"]}, {"text": "方向？"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "向左"}]}]},
    ]
    a, b = load_records(_write(tmp_path / "oa.jsonl", rows))
    assert a["id"] == "oa-1"
    assert a["messages"][0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert a["messages"][1]["content"][:2] == [{"type": "image", "image": str(tmp_path / "x/y.png")},
                                               {"type": "image", "image": "data:image/png;base64,AAAA"}]
    assert a["messages"][2]["content"] == [{"type": "text", "text": "Same."}]
    assert b["messages"][0]["content"][0] == {"type": "video",
                                              "video": [str(tmp_path / "f0.png"), str(tmp_path / "f1.png")]}
    assert (b["task"], b["lang"], b["meta"]) == ("video", "zh", {"answer": "向左"})
    unresolved = next(load_records(tmp_path / "oa.jsonl", resolve_paths=False))
    assert unresolved["messages"][1]["content"][0]["image"] == "x/y.png"


def test_malformed_line_names_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(FINETUNE)
    path.write_text(f"{good}\n\n{good}\n{{\"messages\": [\n{good}\n")
    it = load_records(path)
    next(it), next(it)  # lines 1 and 3 are fine (a blank line is skipped)
    with pytest.raises(RecordError, match=r"bad\.jsonl:4: not valid JSON"):
        next(it)


@pytest.mark.parametrize("row, match", [
    ([1, 2], "must be a JSON object"),
    ({"text": "hi"}, "expected a 'messages' or a 'conversations'"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "unknown content part"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker"),
    ({"conversations": [{"from": "human", "value": "<image>"}]}, "more <image> placeholders"),
])
def test_structural_errors_name_the_line(tmp_path: Path, row, match: str) -> None:
    path = _write(tmp_path / "e.jsonl", [FINETUNE, row])
    with pytest.raises(RecordError, match=rf"e\.jsonl:2: .*{match}"):
        list(load_records(path))


def test_to_finetune_round_trips(tmp_path: Path) -> None:
    recs = list(load_records(_write(tmp_path / "ft.jsonl", [FINETUNE]), resolve_paths=False))
    back = to_finetune(recs[0])
    assert back == FINETUNE
    assert write_jsonl([back], tmp_path / "again.jsonl") == 1
    again = list(load_records(tmp_path / "again.jsonl", resolve_paths=False))
    assert again[0]["messages"] == recs[0]["messages"]
    video = {"id": "v", "messages": [{"role": "user", "content": [{"type": "video", "video": ["a.png"]}]}]}
    with pytest.raises(ValueError, match="no video parts"):
        to_finetune(video)
