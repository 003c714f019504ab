"""The CLI's applications (qwenvl/apps/): interactive chat, resumable captioning, grounding, info.

Runs on the shipped tiny models; `qwenvl.load` is patched to hand out one loaded pipeline per model so
each test does not reload it (test_info loads for real).
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

import qwenvl
from qwenvl.apps.caption import caption_files, done_files, list_images, shard
from qwenvl.cli import main
from tests.conftest import write_image as _img

V2 = "qwenvl-tiny"  # the default: Qwen2.5-VL
V1 = "qwenvl-tiny-qwen-vl"


@pytest.fixture(scope="module")
def pipes():
    return {name: qwenvl.load(name) for name in (V1, V2)}


@pytest.fixture
def shared_load(pipes, monkeypatch):
    monkeypatch.setattr(qwenvl, "load", lambda path, **kw: pipes[path])
    return pipes


def _count_batches(pipe, monkeypatch):
    calls: list[int] = []
    real = pipe.generate_batch

    def counted(convs, **kw):
        calls.append(len(convs))
        return real(convs, **kw)

    monkeypatch.setattr(pipe, "generate_batch", counted)
    return calls


def test_interactive_chat_streams_keeps_history_and_survives_bad_paths(shared_load, tmp_path, monkeypatch, capsys):
    pipe = shared_load[V2]
    seen: list[list[dict]] = []
    real = pipe.chat

    def spy(messages, **kw):
        seen.append(messages)
        return real(messages, **kw)

    monkeypatch.setattr(pipe, "chat", spy)
    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png", (0, 0, 255))
    script = f"/image {a}\n/image {b}\nWhat colour?\n/image {tmp_path / 'missing.png'}\nAnd now?\n/reset\nhi\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))  # ends without /quit: EOF exits
    assert main(["chat", V2, "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert "image file not found" in err and "Traceback" not in err and "history cleared" in err
    assert len(seen) == 3
    first, second, third = seen
    assert [p["type"] for p in first[0]["content"]] == ["image", "image", "text"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]  # history kept across turns
    assert [p["type"] for p in second[-1]["content"]] == ["text"]  # images went with the first turn only
    assert len(third) == 1  # /reset cleared it
    assert len(out.strip().splitlines()) >= 1


def test_one_shot_chat_still_works(shared_load, tmp_path, capsys):
    a = _img(tmp_path / "a.png")
    assert main(["chat", "qwenvl-tiny", "what is this?", "--image", str(a), "--image", str(a),
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_caption_writes_errors_and_resumes_without_redoing(shared_load, image_dir, tmp_path, monkeypatch, capsys):
    calls = _count_batches(shared_load["qwenvl-tiny"], monkeypatch)
    out = tmp_path / "caps.jsonl"
    args = ["caption", "qwenvl-tiny", str(image_dir), "--out", str(out), "--batch-size", "2", "--no-progress",
            "--max-new-tokens", "4"]
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["file"] for r in rows}) == 5
    bad = [r for r in rows if "error" in r]
    assert len(bad) == 1 and bad[0]["file"].endswith("corrupt.png")
    assert all(isinstance(r["caption"], str) for r in rows if "error" not in r)
    assert sum(calls) == 4
    calls.clear()
    assert main(args) == 0  # nothing new: nothing redone
    assert calls == [] and len(out.read_text().splitlines()) == 5
    _img(image_dir / "new.png")
    assert main(args) == 0
    assert calls == [1]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["file"].endswith("new.png")
    assert "Traceback" not in capsys.readouterr().err


def test_caption_killed_after_a_batch_loses_and_duplicates_nothing(pipes, image_dir, tmp_path):
    pipe, out = pipes["qwenvl-tiny"], tmp_path / "caps.jsonl"
    files = list_images(str(image_dir))

    def die(batch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caption_files(pipe, files, out, batch_size=2, progress=False, on_batch=die, max_new_tokens=3)
    assert len(out.read_text().splitlines()) == 2  # the first batch is on disk
    with out.open("a") as fh:
        fh.write('{"file": "torn')  # a kill mid-write: the torn line is ignored and its file redone
    counts = caption_files(pipe, files, out, batch_size=2, progress=False, max_new_tokens=3)
    assert counts["skipped"] == 2 and counts["done"] + counts["errors"] == 3
    recorded = sorted(done_files(out))
    assert recorded == sorted(str(f) for f in files)


def test_caption_shards_by_rank(tmp_path):
    files = [tmp_path / f"{k}.png" for k in range(5)]
    mine, out = shard(files, tmp_path / "c.jsonl", {"WORLD_SIZE": "2", "RANK": "1"})
    assert mine == files[1::2] and out.name == "c.jsonl.rank1"
    assert shard(files, tmp_path / "c.jsonl", {}) == (files, tmp_path / "c.jsonl")


def test_caption_errors_are_one_line(shared_load, tmp_path, capsys):
    assert main(["caption", "qwenvl-tiny", str(tmp_path / "none"), "--out", str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no image files") and err.count("\n") == 1


@pytest.mark.parametrize("name", [V1, V2])
def test_ground_prints_boxes_in_the_image_and_draws(shared_load, name, tmp_path, capsys):
    img, png = _img(tmp_path / "a.png", size=(96, 64)), tmp_path / "out" / "overlay.png"
    assert main(["ground", name, str(img), "the red square", "--out", str(png), "--max-new-tokens", "40",
                 "--temperature", "0"]) == 0
    boxes = json.loads(capsys.readouterr().out)
    assert isinstance(boxes, list)
    for b in boxes:
        assert 0 <= b["x1"] <= b["x2"] <= 96 and 0 <= b["y1"] <= b["y2"] <= 64
    assert Image.open(png).size == (96, 64)


def test_ground_bad_image_is_one_line(shared_load, tmp_path, capsys):
    assert main(["ground", "qwenvl-tiny", str(tmp_path / "no.png"), "x"]) == 2
    err = capsys.readouterr().err
    assert "image file not found" in err and "Traceback" not in err


def test_info_prints_family_and_tokens(capsys):
    assert main(["info", V2]) == 0
    out = capsys.readouterr().out
    assert "family:      qwen2_5_vl" in out and "image tokens 448x448:" in out and "auto dtype:" in out
    assert "int8 kernel: " in out
    assert main(["info", V1, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    n_queries = qwenvl.load(V1).model.cfg.vision.n_queries
    assert info["family"] == "qwen_vl" and set(info["image_tokens"].values()) == {n_queries}
    p = info["params"]
    assert p["vision"] > 0 and p["adapter"] > 0 and p["llm"] > 0 and p["total"] == p["vision"] + p["adapter"] + p["llm"]


def test_info_token_count_follows_the_pixel_budget(capsys):
    assert main(["info", V2, "--json", "--max-pixels", str(28 * 28 * 4)]) == 0
    assert max(json.loads(capsys.readouterr().out)["image_tokens"].values()) <= 4


def test_missing_model_is_one_line(capsys):
    assert main(["info", "qwenvl-tiny-nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_caption_batch_refused_falls_back_per_file(pipes, tmp_path):
    good, wide = _img(tmp_path / "ok.png"), _img(tmp_path / "wide.png", size=(2000, 4))  # ratio 500 > 200
    counts = caption_files(pipes[V2], [good, wide], tmp_path / "c.jsonl", batch_size=2, progress=False,
                           max_new_tokens=3)
    rows = {r["file"]: r for r in map(json.loads, (tmp_path / "c.jsonl").read_text().splitlines())}
    assert counts == {"done": 1, "skipped": 0, "errors": 1}
    assert "caption" in rows[str(good)] and "aspect ratio" in rows[str(wide)]["error"]


def test_info_tokens_match_the_processor(pipes, tmp_path):
    from qwenvl.apps.info import image_tokens

    pipe = pipes[V2]
    for w, h in ((448, 448), (1280, 720)):
        img = _img(tmp_path / f"{w}.png", size=(w, h))
        inp = pipe.prepare([{"role": "user", "content": [{"type": "image", "image": str(img)}]}])
        _, gh, gw = inp.image_grid[0]
        assert image_tokens(pipe, w, h) == gh * gw // pipe.processor.image_cfg.merge_size ** 2


def test_repl_ctrl_c_stops_the_answer_not_the_chat_and_quit_exits():
    from qwenvl.apps.repl import run_repl

    class Fake:
        def __init__(self):
            self.turns, self.closed = [], 0

        def chat(self, messages, stream, **kw):
            self.turns.append(messages)
            fake = self

            def gen():
                try:
                    yield "par"
                    if len(fake.turns) == 1:
                        raise KeyboardInterrupt
                    yield "tial"
                finally:
                    fake.closed += 1
            return gen()

    pipe, out, err = Fake(), io.StringIO(), io.StringIO()
    assert run_repl(pipe, ["first\n", "/bogus\n", "second\n", "/quit\n", "never\n"], out, err) == 0
    assert len(pipe.turns) == 2 and "answer interrupted" in err.getvalue() and "unknown command" in err.getvalue()
    assert [m["role"] for m in pipe.turns[1]] == ["user", "assistant", "user"]  # the partial answer is kept
    assert pipe.turns[1][1]["content"][0]["text"] == "par" and out.getvalue().endswith("partial\n")
