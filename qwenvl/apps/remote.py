"""A backend that talks to an OpenAI-compatible server instead of a local model (`--endpoint URL`).

    pipe = RemotePipeline("http://127.0.0.1:8000/v1", api_key="k")          # ours, vLLM, a cloud's compatible mode
    pipe.chat(messages, max_new_tokens=64, temperature=0.0)                 # -> RemoteResult(.text, .boxes, ...)
    for piece in pipe.chat(messages, stream=True): ...                      # a RemoteStream of text pieces
    pipe.generate_batch([m1, m2, m3], temperature=0.0)                       # concurrent requests, input order

It has the methods the apps call on a local `Pipeline` (chat, generate_batch), so chat / caption / ground
run the same code (resume, per-file error lines, progress, torchrun shards) against either. Messages use
the local form: image parts {"type": "image", "image": PATH | PIL | data URL | http(s) URL}; a local file
is sent as a base64 data URL (PNG / JPEG bytes as they are, other formats re-encoded as PNG).

Boxes are original-image pixels of the last image. Our server sends them as the extension field
`message.boxes` (and `delta.boxes` on the finishing stream chunk); for other servers they are parsed
from the text here, with the box convention of `family`: qwen2_5_vl (the default) speaks absolute pixels
of the RESIZED input, which we recompute with the Qwen2.5-VL resize rule and min/max_pixels (the model's
defaults when unset; a server that resizes differently gives shifted boxes), qwen3_vl speaks per mille.

Errors: a request the server refuses (HTTP 400 / 413 / 422) is a `RequestRefused` (a ValueError, so a
caption batch falls back to file by file); anything that stops every request (a bad key, an unknown
model, a server error, an unreachable URL) is a `RemoteError`. Both carry one line: the server's message.
RemoteError is an OSError (a failed network exchange), so the CLI's one-line error handling covers it.
Must not: parse argv, load local models or import torch-side model code.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from qwenvl.config import FAMILY_NAMES, QWEN2_5_VL, QWEN3_VL
from qwenvl.processing.image import load_image

SENT_AS_IS = {"PNG": "image/png", "JPEG": "image/jpeg"}  # other formats are re-encoded as PNG
REFUSED = (400, 413, 422)  # this request is wrong; the next one may be fine
MAX_CONCURRENCY = 16  # requests in flight per generate_batch
KEY_ENV = ("OPENAI_API_KEY", "DASHSCOPE_API_KEY")


class RemoteError(OSError):
    """The server cannot answer at all: unreachable, bad key, unknown model, server error. status: the
    HTTP status, None when there was no answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RequestRefused(ValueError):
    """The server refused this one request (HTTP 400 / 413 / 422), e.g. an image it cannot decode."""


@dataclass
class RemoteResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None = None
    boxes: list[dict] = field(default_factory=list)  # {label, x1, y1, x2, y2} in original-image pixels


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def image_data_url(src: Any) -> tuple[str, tuple[int, int] | None]:
    """(URL to send, original (width, height) or None when unknown) for a local image source.

    A path becomes a data URL of its bytes; a missing or non-image file raises FileNotFoundError /
    ValueError naming it. data: and http(s): URLs pass through (the server fetches the latter).
    """
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        return src, None
    if isinstance(src, str) and src.startswith("data:"):
        return src, load_image(src).size
    img = load_image(src)  # FileNotFoundError / ValueError naming the source
    if isinstance(src, (str, os.PathLike)):
        path = Path(os.fspath(src).removeprefix("file://"))
        with Image.open(path) as f:
            mime = SENT_AS_IS.get(f.format or "")
        if mime is not None:
            return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode(), img.size
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), img.size


def to_openai_messages(messages: list[dict]) -> tuple[list[dict], tuple[int, int] | None]:
    """Local-form messages -> OpenAI chat messages, and the (width, height) of the last image."""
    out, size = [], None
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(msg)
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                url, size = image_data_url(part["image"])
                extra = {k: part[k] for k in ("min_pixels", "max_pixels") if k in part}
                parts.append({"type": "image_url", "image_url": {"url": url}, **extra})
            elif kind == "video":
                frames = part.get("video")
                if not isinstance(frames, (list, tuple)):
                    raise ValueError(f"video {frames!r}: a video file cannot be sent to a server; pass its frames "
                                     "as a list of images")
                urls = [image_data_url(f)[0] for f in frames]
                parts.append({"type": "video", "video": urls,
                              **{k: v for k, v in part.items() if k not in ("type", "video")}})
            else:
                parts.append(part)
        out.append({**msg, "content": parts})
    return out, size


def guess_family(model: str) -> str:
    """The box convention a model name suggests when the server does not say: Qwen3-VL per mille, else
    Qwen2.5-VL pixels (the cloud's qwen-vl-max / qwen-vl-plus)."""
    return QWEN3_VL if "qwen3" in model.lower() else QWEN2_5_VL


class RemoteStream(Iterator[str]):
    """Text pieces of one streamed answer; once exhausted, .text, .boxes, .finish_reason and .prompt_tokens
    are set. close() ends the HTTP response, which our server takes as a cancel."""

    def __init__(self, pipe: RemotePipeline, stream: Any, size: tuple[int, int] | None, kw: dict) -> None:
        self._pipe, self._stream, self._size, self._kw = pipe, stream, size, kw
        self.text, self.boxes, self.finish_reason, self.prompt_tokens = "", [], None, None
        self._pieces = self._run()

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
        self._stream.close()

    def _run(self) -> Iterator[str]:
        pieces, server_boxes = [], None
        with _errors(self._pipe.url):
            for chunk in self._stream:
                if chunk.usage is not None:
                    self.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices[:1]:
                    if choice.finish_reason is not None:
                        self.finish_reason = choice.finish_reason
                    extra = choice.delta.model_extra or {}
                    if extra.get("boxes") is not None:
                        server_boxes = extra["boxes"]
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        yield choice.delta.content
        self.text = "".join(pieces)
        self.boxes = self._pipe.boxes_of(self.text, self._size, server_boxes, **self._kw)


class RemotePipeline:
    """chat / generate_batch over an OpenAI-compatible server (see the module docstring).

    url: the base URL with its /v1 (e.g. http://127.0.0.1:8000/v1). api_key: default $OPENAI_API_KEY,
    then $DASHSCOPE_API_KEY (a server without a key takes any). model: default the first id that
    /v1/models lists. family: the box convention for servers that send no boxes (default: the family
    the server lists for the model, else guessed from its name, see guess_family).
    """

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, family: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2) -> None:
        from openai import OpenAI

        if family is not None and family not in FAMILY_NAMES:
            raise ValueError(f"unknown family {family!r}; use one of {FAMILY_NAMES}")
        self.url = url.rstrip("/")
        key = api_key or next((os.environ[k] for k in KEY_ENV if os.environ.get(k)), None) or "EMPTY"
        self.client = OpenAI(base_url=self.url, api_key=key, timeout=timeout, max_retries=max_retries)
        self._model, self._family, self._listed = model, family, None
        self._lock = threading.Lock()

    def _listing(self) -> list:
        with self._lock:
            if self._listed is None:
                try:
                    with _errors(self.url):
                        self._listed = list(self.client.models.list())
                except RemoteError as e:
                    if e.status in (401, 403) or e.status is None:  # a bad key / no connection: say just that
                        raise
                    raise RemoteError(f"could not list the models at {self.url} ({e}); name one with --model") \
                        from None
            return self._listed

    @property
    def model(self) -> str:
        """The model id requests name: the one given, else the first the server lists."""
        if self._model is None:
            listed = self._listing()
            if not listed:
                raise RemoteError(f"the server at {self.url} lists no models; name one with --model")
            self._model = listed[0].id
        return self._model

    @property
    def family(self) -> str:
        """The box convention for client-side parsing (servers that send no `boxes`)."""
        if self._family is None:
            try:
                entry = next((m for m in self._listing() if m.id == self.model), None)
            except RemoteError:
                entry = None
            listed = (entry.model_extra or {}).get("family") if entry is not None else None
            self._family = listed if listed in FAMILY_NAMES else guess_family(self.model)
        return self._family

    # --------------------------------------------------------------- requests

    def _request(self, messages: list[dict], kw: dict) -> tuple[dict, tuple[int, int] | None]:
        unknown = set(kw) - {"max_new_tokens", "temperature", "seed", "min_pixels", "max_pixels", "top_p", "stop"}
        if unknown:
            raise ValueError(f"not supported through --endpoint: {sorted(unknown)}")
        msgs, size = to_openai_messages(messages)  # bad image paths fail here, before any network
        req: dict[str, Any] = {"model": self.model, "messages": msgs}
        for ours, theirs in (("max_new_tokens", "max_tokens"), ("temperature", "temperature"), ("seed", "seed"),
                             ("top_p", "top_p"), ("stop", "stop")):
            if kw.get(ours) is not None:
                req[theirs] = kw[ours]
        extra = {k: kw[k] for k in ("min_pixels", "max_pixels") if kw.get(k) is not None}
        if extra:
            req["extra_body"] = extra  # our server's request-level budget; others ignore unknown fields
        return req, size

    def chat(self, messages: list[dict], *, stream: bool = False, **kw: Any) -> RemoteResult | RemoteStream:
        """One chat completion; kw: max_new_tokens, temperature, seed, top_p, stop, min_pixels, max_pixels.
        stream=True: a RemoteStream of text pieces (the request is sent now, so errors raise here)."""
        req, size = self._request(messages, kw)
        with _errors(self.url):
            if stream:
                return RemoteStream(self, self.client.chat.completions.create(
                    **req, stream=True, stream_options={"include_usage": True}), size, kw)
            resp = self.client.chat.completions.create(**req)
        if not resp.choices:
            raise RemoteError(f"the server at {self.url} sent no choices")
        choice = resp.choices[0]
        text = choice.message.content or ""
        usage = resp.usage
        return RemoteResult(text=text, finish_reason=choice.finish_reason,
                            prompt_tokens=usage.prompt_tokens if usage else None,
                            completion_tokens=usage.completion_tokens if usage else None,
                            boxes=self.boxes_of(text, size, (choice.message.model_extra or {}).get("boxes"), **kw))

    def stream(self, messages: list[dict], **kw: Any) -> RemoteStream:
        return self.chat(messages, stream=True, **kw)

    def generate_batch(self, conversations: list[list[dict]], **kw: Any) -> list[RemoteResult]:
        """One request per conversation, up to MAX_CONCURRENCY in flight; results in input order. The first
        failure (in input order) raises, after the requests still queued are dropped."""
        if not conversations:
            return []
        self.model  # noqa: B018 (resolve it once, not in every thread)
        with ThreadPoolExecutor(max_workers=min(len(conversations), MAX_CONCURRENCY)) as pool:
            futures = [pool.submit(self.chat, c, **kw) for c in conversations]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def boxes_of(self, text: str, size: tuple[int, int] | None, server_boxes: Any = None, **kw: Any) -> list[dict]:
        """The answer's boxes in original pixels of an image of `size` = (W, H): the server's own when it sent
        them, else parsed from `text` in `family`'s convention (kw: the request's min_pixels / max_pixels)."""
        if isinstance(server_boxes, list):
            return server_boxes
        if size is None:
            return []
        from qwenvl import families
        from qwenvl.processing.grounding import parse_boxes

        try:
            input_size = families.get(self.family).box_input_size(size, kw.get("min_pixels"), kw.get("max_pixels"))
        except ValueError:
            return []
        return [b.as_dict() for b in parse_boxes(text, self.family, size, input_size)]


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn the openai client's exceptions into RemoteError / RequestRefused with one line of text."""
    import openai

    try:
        yield
    except openai.APITimeoutError:
        raise RemoteError(f"the request to {url} timed out") from None
    except openai.APIConnectionError as e:
        cause = f" ({_one_line(e.__cause__)})" if e.__cause__ is not None else ""
        raise RemoteError(f"could not reach {url}{cause}") from None
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else e.message
        hint = "" if e.status_code != 404 or url.endswith("/v1") else f" (is the base URL {url}/v1?)"
        line = f"{_one_line(message)} (HTTP {e.status_code}){hint}"
        raise (RequestRefused(line) if e.status_code in REFUSED else RemoteError(line, e.status_code)) from None
    except openai.OpenAIError as e:  # e.g. an error event in the middle of a stream
        raise RemoteError(_one_line(getattr(e, "message", None) or e)) from None
