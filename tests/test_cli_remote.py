"""chat / caption / ground with --endpoint (qwenvl/apps/remote.py) against the real `qwenvl serve`.

The server (tests/server/conftest.py) runs the shipped qwenvl-tiny in a subprocess on 127.0.0.1; the
CLI runs in-process. Every request goes to 127.0.0.1: our server, or a free port nobody listens on.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from qwenvl.apps import remote
from qwenvl.apps.caption import caption_files, done_files, list_images
from qwenvl.apps.remote import RemotePipeline, image_data_url
from qwenvl.cli import main
from tests.conftest import write_image as _img
from tests.server.conftest import free_port, red_box_image, start_server, stop_server

QUESTION = "What colour is the square?"
GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]
LOCAL_FP32 = ["--dtype", "float32"]  # the test server runs fp32 (tests/server/conftest.py)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("remote") / "server.log")
    yield s
    stop_server(s)


@pytest.fixture
def endpoint(srv) -> list[str]:
    return ["--endpoint", f"{srv.url}/v1", "--api-key", srv.api_key]


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # bound and released: nobody listens there


def test_one_shot_chat_equals_the_local_answer(endpoint, tmp_path, capsys):
    img = str(tmp_path / "red.png")
    red_box_image().save(img)
    assert main(["chat", "qwenvl-tiny", QUESTION, "--image", img, *GREEDY, *LOCAL_FP32]) == 0
    local = capsys.readouterr().out
    assert main(["chat", *endpoint, QUESTION, "--image", img, *GREEDY]) == 0
    out, err = capsys.readouterr()
    assert out == local and out.strip() and "Traceback" not in err


def test_model_and_family_default_to_the_servers_listing(srv):
    pipe = RemotePipeline(f"{srv.url}/v1", api_key=srv.api_key)
    assert pipe.model == "qwenvl-tiny" and pipe.family == "qwen2_5_vl"


def test_caption_records_errors_and_resumes_without_redoing(endpoint, image_dir, tmp_path, monkeypatch, capsys):
    calls: list[int] = []
    real = RemotePipeline.generate_batch

    def counted(self, convs, **kw):
        calls.append(len(convs))
        return real(self, convs, **kw)

    monkeypatch.setattr(RemotePipeline, "generate_batch", counted)
    out = tmp_path / "caps.jsonl"
    args = ["caption", *endpoint, str(image_dir), "--out", str(out), "--batch-size", "2", "--no-progress",
            "--max-new-tokens", "4", "--temperature", "0"]
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["file"] for r in rows}) == 5
    bad = [r for r in rows if "error" in r]
    assert len(bad) == 1 and bad[0]["file"].endswith("corrupt.png") and "not an image" in bad[0]["error"]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in rows if "error" not in r)
    assert sum(calls) == 4  # the corrupt file never went to the server
    calls.clear()
    assert main(args) == 0  # nothing new: nothing redone
    assert calls == [] and len(out.read_text().splitlines()) == 5
    _img(image_dir / "new.png")
    assert main(args) == 0
    assert calls == [1]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["file"].endswith("new.png")
    assert "Traceback" not in capsys.readouterr().err


def test_caption_killed_after_a_batch_loses_and_duplicates_nothing(srv, image_dir, tmp_path):
    pipe, out = RemotePipeline(f"{srv.url}/v1", api_key=srv.api_key), tmp_path / "caps.jsonl"
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
    assert sorted(done_files(out)) == sorted(str(f) for f in files)


def test_ground_prints_the_servers_boxes_and_draws(srv, endpoint, tmp_path, capsys):
    from openai import OpenAI

    path, png = tmp_path / "red.png", tmp_path / "out" / "overlay.png"
    red_box_image().save(path)
    # 80 tokens: the Qwen2.5-VL JSON box takes ~56 of the tiny vocabulary's tokens
    assert main(["ground", *endpoint, str(path), "the red square", "--out", str(png), "--temperature", "0",
                 "--max-new-tokens", "80"]) == 0
    boxes = json.loads(capsys.readouterr().out)
    client = OpenAI(base_url=f"{srv.url}/v1", api_key=srv.api_key, max_retries=0, timeout=120)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    resp = client.chat.completions.create(model="qwenvl-tiny", temperature=0, max_tokens=80, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "Find the red square."}]}])
    assert boxes and boxes == resp.choices[0].message.model_extra["boxes"]
    assert Image.open(png).size == (320, 240)


def test_interactive_chat_streams_keeps_history_and_resets(endpoint, tmp_path, monkeypatch, capsys):
    img = tmp_path / "red.png"
    red_box_image().save(img)
    assert main(["chat", *endpoint, QUESTION, "--image", str(img), *GREEDY]) == 0
    one_shot = capsys.readouterr().out.strip()
    seen, streams = [], []
    real = RemotePipeline.chat

    def spy(self, messages, **kw):
        seen.append((messages, kw.get("stream")))
        streams.append(real(self, messages, **kw))
        return streams[-1]

    monkeypatch.setattr(RemotePipeline, "chat", spy)
    script = (f"/image {img}\n{QUESTION}\n/image {tmp_path / 'missing.png'}\nAnd now?\n/reset\nhi\n"
              "/quit\nnever asked\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", *endpoint, *GREEDY]) == 0
    out, err = capsys.readouterr()
    assert "image file not found" in err and "history cleared" in err and "Traceback" not in err
    assert [stream for _, stream in seen] == [True, True, True]
    first, second, third = (m for m, _ in seen)
    assert [p["type"] for p in first[0]["content"]] == ["image", "text"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]  # history kept across turns
    assert len(third) == 1  # /reset cleared it
    lines = out.splitlines()
    assert lines[0] == one_shot  # streamed pieces join to the non-streaming answer
    assert all(isinstance(s, remote.RemoteStream) and s.finish_reason in ("stop", "length") for s in streams)
    assert "\n".join(s.text for s in streams).splitlines() == lines  # an answer may hold newlines (JSON boxes)


@pytest.mark.parametrize("model", [[], ["--model", "qwenvl-tiny"]], ids=["listing", "chat"])
def test_a_wrong_api_key_is_the_servers_message(srv, model, capsys):
    assert main(["chat", "--endpoint", f"{srv.url}/v1", "--api-key", "wrong", *model, "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid or missing API key") and err.count("\n") == 1


def test_an_unknown_model_is_the_servers_message(endpoint, capsys):
    assert main(["chat", *endpoint, "--model", "gpt-nope", "hi"]) == 2
    err = capsys.readouterr().err
    assert "'gpt-nope' does not exist" in err and err.count("\n") == 1


def test_an_unreachable_endpoint_names_the_url(dead_url, tmp_path, monkeypatch, capsys):
    img = str(_img(tmp_path / "a.png"))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))  # the interactive chat's one question
    base = ["--endpoint", dead_url, "--api-key", "k"]
    for argv in (["chat", *base, "hi"], ["chat", *base], ["ground", *base, img, "x"],
                 ["caption", *base, str(tmp_path), "--out", str(tmp_path / "c.jsonl"), "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: could not reach {dead_url}" in err and "Traceback" not in err, argv


def test_bad_images_fail_before_any_request(dead_url, tmp_path, capsys):
    (tmp_path / "fake.png").write_text("plain text")
    for path, why in ((tmp_path / "missing.png", "image file not found"), (tmp_path / "fake.png", "not an image")):
        assert main(["chat", "--endpoint", dead_url, "--model", "m", "q", "--image", str(path)]) == 2
        err = capsys.readouterr().err
        assert why in err and str(path) in err and "could not reach" not in err


def test_endpoint_takes_no_model_positional(dead_url, capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--endpoint", dead_url, "qwenvl-tiny", "question"])
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chat"])  # the local path still needs MODEL
    assert "required: model" in capsys.readouterr().err


def test_image_data_urls_keep_png_and_jpeg_bytes(tmp_path):
    png, jpg, bmp = tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "a.bmp"
    for p in (png, jpg, bmp):
        _img(p, size=(30, 20))
    for p, mime in ((png, "image/png"), (jpg, "image/jpeg")):
        url, size = image_data_url(str(p))
        assert url == f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode() and size == (30, 20)
    url, size = image_data_url(str(bmp))  # re-encoded
    assert url.startswith("data:image/png;base64,") and size == (30, 20)
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (30, 20)


def test_boxes_from_text_for_servers_that_send_none(dead_url):
    size = (640, 480)
    q25 = RemotePipeline(dead_url, api_key="k", model="qwen-vl-max")
    assert q25.family == "qwen2_5_vl"  # the listing fails (nobody there): guessed from the name
    # Qwen2.5-VL: absolute pixels of the resized input; 640x480 resizes to 644x476
    b = q25.boxes_of('[{"bbox_2d": [0, 0, 322, 238], "label": "cat"}]', size)
    assert b == [{"label": "cat", "x1": 0.0, "y1": 0.0, "x2": 320.0, "y2": 240.0}]
    q3 = RemotePipeline(dead_url, api_key="k", model="qwen3-vl-plus")
    assert q3.family == "qwen3_vl"
    assert q3.boxes_of('{"bbox_2d": [500, 500, 1000, 1000]}', size)[0]["x1"] == 320.0
    assert q3.boxes_of("anything", size, server_boxes=[{"label": None, "x1": 1}]) == [{"label": None, "x1": 1}]


def test_api_key_comes_from_the_environment(dead_url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dash")
    assert RemotePipeline(dead_url, model="m").client.api_key == "sk-dash"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert RemotePipeline(dead_url, model="m").client.api_key == "sk-openai"
    assert RemotePipeline(dead_url, api_key="given", model="m").client.api_key == "given"


def test_python_api_connect_matches_load(srv):
    import qwenvl

    msgs = [{"role": "user", "content": [{"type": "image", "image": red_box_image()},
                                         {"type": "text", "text": "Detect the circle."}]}]
    remote_pipe = qwenvl.connect(f"{srv.url}/v1", api_key=srv.api_key)
    got = remote_pipe.chat(msgs, max_new_tokens=24, temperature=0)
    want = qwenvl.load(dtype="float32").chat(msgs, max_new_tokens=24, temperature=0)
    assert got.text == want.text and got.boxes == want.boxes
    assert "".join(remote_pipe.chat(msgs, stream=True, max_new_tokens=24, temperature=0)) == want.text
