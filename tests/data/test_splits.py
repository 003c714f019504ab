"""No leakage: the same scene / text / document / chart never appears in two splits, and the test split
is made exactly like the training split (same knobs, fonts, phrasings)."""

from __future__ import annotations

from collections import defaultdict

from qwenvl.data import TASKS, make_sample, resolve_config
from qwenvl.data.tasks import SPLITS, split_of

N = 30  # per task and split; small content spaces (easy OCR words, 1-object scenes) collide often


def _by_split(cfg, tasks, n=N):
    return {s: [make_sample(cfg, t, s, i)[0] for t in tasks for i in range(n)] for s in SPLITS}


def _signatures(rec: dict) -> set[str]:
    """Content recomputed from meta, independently of the generator's keys."""
    meta = rec["meta"]
    out = set()
    if "ocr_text" in meta:
        out.add("text:" + meta["ocr_text"].casefold())
    if "doc" in meta:
        out.add("doc:" + repr(meta["doc"]["rows"]))
    if "chart" in meta:
        out.add("chart:" + repr(list(zip(meta["chart"]["labels"], meta["chart"]["values"], strict=True))))
    w, h = meta["image_size"]
    for objs in meta.get("images", [meta["objects"]] if "objects" in meta else []):
        out.add("objs:" + repr(sorted((o["shape"], o["colour"], o["size"], o["cx"] * 8 // w, o["cy"] * 8 // h)
                                      for o in objs)))
    return out


def test_content_never_spans_two_splits() -> None:
    # Small content spaces make collisions likely: easy knobs, OCR limited to the 3-letter words.
    easy = {t: "easy" for t in TASKS} | {"ocr": {"level": "easy", "kinds": ["word"], "length": [3, 3]}}
    cfg = resolve_config(seed=0, splits=(0.6, 0.2, 0.2), difficulty=easy)
    recs = _by_split(cfg, list(TASKS))
    keys = {s: {k for r in rs for k in r["meta"]["content_keys"]} for s, rs in recs.items()}
    sigs = {s: set().union(*(_signatures(r) for r in rs)) for s, rs in recs.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not keys[a] & keys[b], f"{a}/{b} share content keys"
        assert not sigs[a] & sigs[b], f"{a}/{b} share content: {sorted(sigs[a] & sigs[b])[:3]}"
    for s, rs in recs.items():  # every image's key hashes to the record's split
        assert all(split_of(k, cfg.fractions) == s for r in rs for k in r["meta"]["content_keys"])
    # The check has teeth: within a split the same words repeat, so a per-sample split would leak.
    texts = [r["meta"]["ocr_text"].casefold() for r in recs["train"] if r["task"] == "ocr"]
    assert len(set(texts)) < len(texts)


def test_split_depends_on_content_not_seed() -> None:
    a = resolve_config(seed=1, tasks=["ocr"], difficulty="easy")
    b = resolve_config(seed=2, tasks=["ocr"], difficulty="easy")
    seen: dict[str, set[str]] = defaultdict(set)
    for cfg in (a, b):
        for s in SPLITS:
            for i in range(40):
                seen[make_sample(cfg, "ocr", s, i)[0]["meta"]["ocr_text"].casefold()].add(s)
    assert all(len(v) == 1 for v in seen.values())


def test_test_split_is_as_hard_as_train() -> None:
    cfg = resolve_config(seed=0, tasks=["ocr", "vqa", "count"])
    recs = _by_split(cfg, ["ocr", "vqa", "count"], n=60)
    for task in ("ocr", "vqa", "count"):
        tr = [r for r in recs["train"] if r["task"] == task]
        te = [r for r in recs["test"] if r["task"] == task]
        assert tr[0]["meta"]["difficulty"] == te[0]["meta"]["difficulty"]
        if task == "ocr":
            for key in ("font", "background"):  # the same fonts and backgrounds, not an easier subset
                assert {r["meta"][key] for r in te} == {r["meta"][key] for r in tr}
            lens = [len(r["meta"]["ocr_text"]) for r in te]
            assert min(lens) <= 4 and max(lens) >= 7
        questions = {m["content"][-1]["text"] for r in te for m in r["messages"][:1]}
        assert len(questions) > 10  # phrasing variety in test too
    qtypes = {r["meta"]["qtype"] for r in recs["test"] if r["task"] == "vqa"}
    assert len(qtypes) >= 5
