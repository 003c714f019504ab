"""Training data: records -> TrainExamples, lazily, with skip accounting, resumable shuffling and mixtures.

Records are read with qwenvl.data.formats (one record at a time, so a malformed one is skipped rather
than ending the run): our format / HF / OpenAI `messages`, and the official Qwen-VL finetune format
`{"conversations": [{"from": "user", "value": "Picture 1: <img>p.jpg</img>\\n..."}]}`, from JSONL or a
JSON list. Relative image and video paths resolve against the folder of the file a record came from
(in-memory records: against `image_root`).

A sample that cannot be used (missing or corrupt image, malformed record, no exact mask, longer than
max_len) is SKIPPED, COUNTED in `dataset.skipped` (reason -> records) and REPORTED with a
SkippedSampleWarning naming the record id and path; it is remembered, so later epochs skip it silently.
Samples are never truncated (a cut could fall inside an image).

Order: a permutation of the records seeded by (seed, epoch); `state_dict()` is the position
{"epoch", "index"} (index = records of this epoch's order already consumed), so a run restored with
`load_state_dict` yields exactly the examples an uninterrupted run would have yielded next.

Must not: pad or pack (collate.py), know the model, or fetch anything from the network.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from qwenvl.data.formats import to_record
from qwenvl.inputs import ModelInputs
from qwenvl.processing.chat_v1 import RESPONSE_TAGS
from qwenvl.processing.image import load_image
from qwenvl.train.masks import TrainExample, build_example

PathLike = str | Path


class SkippedSampleWarning(UserWarning):
    """A training record was skipped (the message names the record, the reason and the path)."""


class Entry(NamedTuple):
    record: dict
    base: Path | None  # folder that relative media paths resolve against
    rid: str  # record id for reports ("id" field, else file:line)


# ------------------------------------------------------------------------------------ records


def read_records(path: PathLike) -> Iterator[Entry]:
    """Raw entries of a .jsonl file (one JSON object per line) or a .json file holding a list of objects.

    A line that is not JSON becomes an entry that is skipped (and reported) when it is reached, so one
    bad line does not stop a run. Ids default to `{file stem}-{line}` as in qwenvl.data.formats.
    """
    path = Path(path)
    base = path.resolve().parent
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for n, rec in enumerate(data if isinstance(data, list) else [data]):
            yield Entry(rec, base, _record_id(rec, f"{path.stem}-{n}"))
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = {_LOAD_ERROR: f"{path}:{n}: not valid JSON ({e.msg})"}
            yield Entry(rec, base, _record_id(rec, f"{path.stem}-{n}"))


def load_entries(source: PathLike | Sequence[PathLike] | Sequence[dict], image_root: PathLike | None = None,
                 keep: Callable[[dict], bool] | None = None) -> list[Entry]:
    """Path(s) of .jsonl/.json files, or in-memory records (media paths relative to image_root)."""
    if isinstance(source, (str, Path)):
        source = [source]
    root = Path(image_root).resolve() if image_root is not None else None
    out: list[Entry] = []
    for n, item in enumerate(source):
        if isinstance(item, Entry):
            out.append(item)
        elif isinstance(item, dict):
            out.append(Entry(item, root, _record_id(item, f"#{n}")))
        else:
            out.extend(read_records(item))
    return [e for e in out if keep is None or (isinstance(e.record, dict) and keep(e.record))]


_LOAD_ERROR = "__load_error__"


def _record_id(rec: Any, fallback: str) -> str:
    return str(rec["id"]) if isinstance(rec, dict) and rec.get("id") is not None else fallback


def convert(entry: Entry) -> dict:
    """An entry in any accepted format as our record (qwenvl.data.formats.to_record): canonical
    message parts, media paths resolved against entry.base. Raises ValueError for a malformed record."""
    if isinstance(entry.record, dict) and _LOAD_ERROR in entry.record:
        raise ValueError(entry.record[_LOAD_ERROR])
    return to_record(entry.record, entry.base, where=f"record {entry.rid}", default_id=entry.rid)


def record_turns(record: dict) -> list[tuple[str, str]]:
    """(role, text) of a record's (our format) user and assistant texts in order, image markup removed."""
    turns = []
    for m in record["messages"]:
        if m["role"] in ("user", "assistant"):
            content = m["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            turns += [(m["role"], p["text"].strip()) for p in parts if p.get("type") == "text" and p["text"].strip()]
    return turns


def record_texts(record: dict) -> list[str]:
    """The plain texts of a record's user and assistant turns (e.g. to train the tiny vocabulary)."""
    return [text for _, text in record_turns(record)]


# ------------------------------------------------------------------------------------ datasets


class _Skip(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class RecordDataset:
    """Shared machinery: entries, a (seed, epoch) order, a resumable position, skip accounting.

    Subclasses implement `_make(entry) -> TrainExample` raising `_Skip` (or ValueError/OSError...).
    """

    def __init__(self, entries: list[Entry], max_len: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self.entries = entries
        self.max_len = max_len
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self.skipped: Counter[str] = Counter()
        self.skip_log: list[tuple[str, str, str]] = []  # (record id, reason, detail), first 1000
        self._bad: dict[int, str] = {}
        self._order_cache: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def order(self, epoch: int) -> list[int]:
        """Record indices in the order of `epoch` (a fixed permutation per (seed, epoch))."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            idx = list(range(len(self.entries)))
            if self.shuffle:
                random.Random(f"qwenvl-data/{self.seed}/{epoch}").shuffle(idx)
            self._order_cache = (epoch, idx)
        return self._order_cache[1]

    def build(self, i: int) -> TrainExample | None:
        """The example of record i, or None if it is skipped (then counted and warned about once)."""
        if i in self._bad:
            return None
        entry = self.entries[i]
        try:
            ex = self._make(entry)
            if len(ex) > self.max_len:
                raise _Skip("too_long", f"{len(ex)} tokens > max_len {self.max_len}")
            if ex.num_targets == 0:
                raise _Skip("no_targets", "nothing to supervise")
        except _Skip as s:
            self._skip(i, s.reason, str(s))
            return None
        except (ValueError, TypeError, KeyError, OSError) as e:  # malformed record, unmaskable chat, bad video
            self._skip(i, "invalid", f"{type(e).__name__}: {e}")
            return None
        return ex

    def _skip(self, i: int, reason: str, detail: str) -> None:
        self._bad[i] = reason
        self.skipped[reason] += 1
        rid = self.entries[i].rid
        if len(self.skip_log) < 1000:
            self.skip_log.append((rid, reason, detail))
        warnings.warn(f"skipping record {rid}: {reason}: {detail}", SkippedSampleWarning, stacklevel=3)

    def __iter__(self) -> Iterator[TrainExample]:
        """The rest of the current epoch (at an epoch's end, the whole next epoch).

        The position is read and advanced on every step, so `state_dict()` taken after receiving an
        example is the position right after it. Pull only what you use: `zip(stream, range(n))` pulls
        one example too many; `itertools.islice(stream, n)` does not.
        """
        if self.index >= len(self.entries):
            self.epoch, self.index = self.epoch + 1, 0
        while self.index < len(self.entries):
            i = self.order(self.epoch)[self.index]
            self.index += 1
            ex = self.build(i)
            if ex is not None:
                yield ex

    def stream(self) -> Iterator[TrainExample]:
        """Endless examples across epochs (raises once every record has been skipped)."""
        while True:
            yield from self
            if len(self._bad) >= len(self.entries):
                raise RuntimeError(f"no usable examples (skipped: {dict(self.skipped)})")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "size": len(self.entries)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size", len(self.entries)) != len(self.entries) or state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data state is for {state.get('size')} records with seed {state.get('seed')}, "
                             f"this dataset has {len(self.entries)} with seed {self.seed}")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def report(self) -> str:
        """One line: how many records were skipped, by reason."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{len(self.entries)} records, skipped {sum(self.skipped.values())} ({reasons})"

    def _make(self, entry: Entry) -> TrainExample:
        raise NotImplementedError


class SFTDataset(RecordDataset):
    """Chat records -> masked TrainExamples (see masks.build_example), built when first iterated.

    source: a .jsonl/.json path, several paths, or a list of record dicts (media relative to image_root).
    keep: optional record filter (e.g. one task for a mixture). template_vars: Qwen2-VL processor options
    (min_pixels, max_pixels) and chat-template variables (add_vision_id), passed to build_example.
    drop_media: remove image and video parts, so a decoder learns the chat text alone (stage 0).
    dense: (vision config, cells per token side) to attach train/dense.py targets from each record's meta.
    point: the vision config, to attach train/point.py targets (the question's object) likewise.
    """

    def __init__(self, source: PathLike | Sequence[PathLike] | Sequence[dict], processor: Any, max_len: int, *,
                 seed: int = 0, shuffle: bool = True, image_root: PathLike | None = None,
                 keep: Callable[[dict], bool] | None = None, template_vars: dict | None = None,
                 drop_media: bool = False, dense: tuple[Any, int] | None = None, point: Any = None) -> None:
        super().__init__(load_entries(source, image_root, keep), max_len, seed=seed, shuffle=shuffle)
        self.processor = processor
        self.template_vars = dict(template_vars or {})
        self.drop_media = drop_media
        self.dense = dense
        self.point = point

    @classmethod
    def by_task(cls, source: PathLike | Sequence[PathLike] | Sequence[dict], processor: Any, max_len: int,
                key: str = "task", **kw: Any) -> dict[str, SFTDataset]:
        """One dataset per value of record[key] (records are read once), e.g. as Mixture sources."""
        groups: dict[str, list[Entry]] = {}
        for e in load_entries(source, kw.pop("image_root", None), kw.pop("keep", None)):
            groups.setdefault(str(e.record.get(key)), []).append(e)
        return {name: cls(entries, processor, max_len, **kw) for name, entries in sorted(groups.items())}

    def _make(self, entry: Entry) -> TrainExample:
        msgs = convert(entry)["messages"]
        for m in msgs:
            if self.drop_media:  # text-only view of a multimodal chat (stage 0)
                m["content"] = [p for p in m["content"] if p["type"] not in ("image", "video")]
            m["content"] = [self._open_image(p) for p in m["content"]]
        ex = build_example(self.processor, msgs, **self.template_vars)
        if self.dense is not None:
            from qwenvl.train.dense import record_targets

            ex.dense = record_targets(entry.record.get("meta") or {}, ex.inputs, *self.dense)
        if self.point is not None:
            from qwenvl.train.point import record_point

            ex.point = record_point(entry.record.get("meta") or {}, ex.inputs, self.point)
        return ex

    @staticmethod
    def _open_image(part: dict) -> dict:
        """Images are opened here, so a missing or corrupt file is named and classified."""
        if part["type"] != "image":
            return part
        src = part["image"]
        try:
            return dict(part, image=load_image(src))
        except FileNotFoundError as e:
            raise _Skip("missing_image", f"{src} ({e})") from None
        except (ValueError, TypeError, OSError) as e:
            raise _Skip("bad_image", f"{src if isinstance(src, str) else type(src).__name__} ({e})") from None


class TextDataset(RecordDataset):
    """Stage 0 (text-only LM): each record's question and answer texts as one plain document.

    Document = the user and assistant texts, "\\n" between them, then <|endoftext|>; every token is a
    target. Each text is encoded as SFT encodes it, so stage 0 and SFT agree on the ids: questions
    with no special tokens; answers likewise for Qwen2-VL, with the grounding tags (<ref>, <box>, ...)
    special for v1 (chat_v1.RESPONSE_TAGS). `from_texts` takes plain strings (no special tokens).
    Positions are M-RoPE [3, T] rows (all three equal) for Qwen2-VL processors and 1-D for v1.
    """

    def __init__(self, source: PathLike | Sequence[PathLike] | Sequence[dict], processor: Any, max_len: int, *,
                 seed: int = 0, shuffle: bool = True, keep: Callable[[dict], bool] | None = None) -> None:
        super().__init__(load_entries(source, None, keep), max_len, seed=seed, shuffle=shuffle)
        self.processor = processor
        self.v1 = processor.prompt_format == "chatml_v1"  # v1 answers keep grounding tags as special tokens
        tok = processor.tokenizer
        self.eod_id = tok.eod_id if self.v1 else tok.token_id("<|endoftext|>")

    @classmethod
    def from_texts(cls, texts: Sequence[str], processor: Any, max_len: int, **kw: Any) -> TextDataset:
        """One document per string."""
        return cls([Entry({"text": t}, None, f"#{n}") for n, t in enumerate(texts)], processor, max_len, **kw)

    def _make(self, entry: Entry) -> TrainExample:
        rec = entry.record
        turns = [("user", rec["text"])] if isinstance(rec.get("text"), str) else record_turns(convert(entry))
        if not any(text for _, text in turns):
            raise _Skip("no_targets", "no text")
        tok = self.processor.tokenizer
        ids: list[int] = []
        for k, (role, text) in enumerate(turns):
            ids += tok.encode("\n", allow_special=False) if k else []
            if self.v1 and role == "assistant":
                ids += tok.encode_pieces([(text, RESPONSE_TAGS)])
            else:
                ids += tok.encode(text, allow_special=False)
        ids.append(self.eod_id)
        inputs = ModelInputs(input_ids=ids, positions=self.processor.text_positions(len(ids)),
                             text="\n".join(text for _, text in turns))
        return TrainExample(inputs, list(ids))


# ------------------------------------------------------------------------------------ mixtures

Weights = dict[str, float] | Callable[[int], dict[str, float]]


class Mixture:
    """Interleaves endless streams of several datasets, drawing the source of step k by weights(k).

    weights: {name: weight} or a curriculum `step -> {name: weight}`. The draw of step k depends only
    on (seed, k), so the state is the step plus each source's position.
    """

    def __init__(self, sources: dict[str, RecordDataset], weights: Weights, seed: int = 0) -> None:
        self.sources = dict(sources)
        self.weights = weights
        self.seed = seed
        self.step = 0
        self._streams: dict[str, Iterator[TrainExample]] = {}

    def pick(self, step: int) -> str:
        w = self.weights(step) if callable(self.weights) else self.weights
        names = [n for n in self.sources if w.get(n, 0) > 0]
        if not names:
            raise ValueError(f"mixture weights at step {step} select no source: {w}")
        return random.Random(f"qwenvl-mix/{self.seed}/{step}").choices(names, weights=[w[n] for n in names])[0]

    def __iter__(self) -> Iterator[TrainExample]:
        while True:
            name = self.pick(self.step)
            if name not in self._streams:
                self._streams[name] = self.sources[name].stream()
            ex = next(self._streams[name])
            self.step += 1
            yield ex

    def state_dict(self) -> dict:
        return {"step": self.step, "sources": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for n, s in state["sources"].items():
            self.sources[n].load_state_dict(s)
        self._streams = {}

    @property
    def skipped(self) -> Counter[str]:
        return sum((s.skipped for s in self.sources.values()), Counter())


def linear_curriculum(start: dict[str, float], end: dict[str, float], steps: int) -> Callable[[int], dict[str, float]]:
    """Weights moving linearly from `start` (step 0) to `end` (step >= steps)."""
    names = set(start) | set(end)

    def weights(step: int) -> dict[str, float]:
        a = min(max(step / max(steps, 1), 0.0), 1.0)
        return {n: (1 - a) * start.get(n, 0.0) + a * end.get(n, 0.0) for n in names}

    return weights


def iter_texts(source: PathLike | Sequence[PathLike] | Sequence[dict]) -> Iterable[str]:
    """All user/assistant texts of the records (e.g. to train the tiny vocabulary)."""
    for e in load_entries(source):
        try:
            yield from record_texts(convert(e))
        except ValueError:
            continue
