"""The real server for the protocol, hostile-input, load and browser tests: `qwenvl serve` in a
subprocess on 127.0.0.1 (a free port), the shipped default model, an API key, fp32 (tests compare its
answers with an in-process pipeline loaded in fp32). Session-scoped; its log is printed when a test
fails to start it."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

API_KEY = "test-key-123"


@dataclass
class LiveServer:
    url: str
    api_key: str
    proc: subprocess.Popen
    log: Path
    files: Path | None = None  # the --allow-local-files root

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(f"{self.url}/health", timeout=10) as r:
            return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, *extra: str, model: str = "qwenvl-tiny") -> LiveServer:
    port = free_port()
    cmd = [sys.executable, "-m", "qwenvl", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--api-key", API_KEY, "--log-level", "warning", "--dtype", "float32", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    srv = LiveServer(f"http://127.0.0.1:{port}", API_KEY, proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            srv.health()
            return srv
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not come up in 120 s:\n{log.read_text()[-3000:]}")


def stop_server(srv: LiveServer) -> None:
    srv.proc.terminate()
    try:
        srv.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        srv.proc.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> LiveServer:
    root = tmp_path_factory.mktemp("server")
    files = root / "files"
    files.mkdir()
    red_box_image().save(files / "ok.png")
    (files / "escape.png").symlink_to("/etc/hostname")  # a link inside the root that points outside it
    srv = start_server(root / "server.log", "--slots", "8", "--max-pending", "48", "--max-images", "8",
                       "--max-body-mb", "8", "--allow-remote-images", "--allow-local-files", str(files))
    srv.files = files
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0, timeout=120)


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def red_box_image(w: int = 320, h: int = 240) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    img.paste((220, 30, 30), (w // 4, h // 4, w // 2, h // 2))
    return img
