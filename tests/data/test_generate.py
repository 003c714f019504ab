"""generate(): byte-identical output for a seed (also across worker counts and after a resume), the
manifest's counts, split sizes, the out_dir safety check and the `qwenvl synth` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qwenvl.data.synth as G
from qwenvl.data import TASKS, generate, load_records, main_synth

SMALL = {"n_per_task": 4, "splits": (0.5, 0.25, 0.25), "image_size": 96, "progress": False}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=7, **SMALL)
    b = generate(tmp_path / "b", seed=7, workers=2, **SMALL)
    generate(tmp_path / "c", seed=8, **SMALL)
    ta, tb, tc = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b and ta == tb  # 1 worker and 2 workers: identical
    assert ta["train.jsonl"] != tc["train.jsonl"]
    n_png = sum(p.endswith(".png") for p in ta)
    assert n_png >= 4 * len(TASKS)
    pngs = {p for p in ta if p.endswith(".png")}
    assert set(ta) == {"manifest.json", "train.jsonl", "val.jsonl", "test.jsonl"} | pngs


def test_manifest_counts_and_every_image_exists(tmp_path: Path) -> None:
    m = generate(tmp_path, n_per_task={"ocr": 8, "count": 4}, seed=1, langs=["en", "zh"], **{
        k: v for k, v in SMALL.items() if k != "n_per_task"})
    assert m["counts"]["train"] == {"ocr": {"en": 2, "zh": 2}, "count": {"en": 1, "zh": 1}}
    assert m["counts"]["test"] == {"ocr": {"en": 1, "zh": 1}, "count": {"en": 1}}
    assert m["files"]["val"]["records"] == 3 and m["seed"] == 1 and m["version"] == G.version_hash()
    assert m["fonts"] and m["difficulty"]["ocr"]["level"] == "medium"
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    for split in ("train", "val", "test"):
        for rec in load_records(tmp_path / f"{split}.jsonl"):
            part = rec["messages"][0]["content"][0]
            assert Path(part["image"]).is_file()  # resolved against the JSONL's folder
    assert not (tmp_path / ".parts").exists()


def _interrupted(path: Path, args: dict, monkeypatch) -> None:
    """Run generate() until every chunk is written, then fail before the split files are assembled."""
    def crash(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(G, "_finish", crash)
        with pytest.raises(KeyboardInterrupt):
            generate(path, **args)


def test_resume_skips_finished_chunks_and_matches_a_fresh_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(G, "CHUNK", 1)
    args = {**SMALL, "tasks": ["ocr", "vqa"], "seed": 3}
    generate(tmp_path / "fresh", **args)
    _interrupted(tmp_path / "resumed", args, monkeypatch)
    parts = sorted((tmp_path / "resumed" / ".parts").glob("*.jsonl"))
    assert len(parts) == 8
    parts[0].unlink()  # one chunk "not yet done"
    calls = []
    real_job = G._run_job
    monkeypatch.setattr(G, "_run_job", lambda *a: calls.append(a) or real_job(*a))
    generate(tmp_path / "resumed", resume=True, **args)
    assert len(calls) == 1 and _tree(tmp_path / "resumed") == _tree(tmp_path / "fresh")


def test_resume_refuses_other_arguments(tmp_path: Path, monkeypatch) -> None:
    args = {**SMALL, "tasks": ["ocr"], "seed": 3}
    _interrupted(tmp_path, args, monkeypatch)
    with pytest.raises(ValueError, match="other arguments"):
        generate(tmp_path, resume=True, **{**args, "seed": 4})


def test_refuses_a_folder_that_is_not_a_synth_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_regenerating_replaces_the_previous_dataset(tmp_path: Path) -> None:
    generate(tmp_path, seed=0, **{**SMALL, "n_per_task": 8})
    generate(tmp_path, seed=0, **SMALL)
    again = _tree(tmp_path)
    generate(tmp_path / "x", seed=0, **SMALL)
    assert again == _tree(tmp_path / "x")  # no stale images from the bigger run


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown tasks"):
        G.resolve_config(tasks=["ocr", "nope"])
    with pytest.raises(ValueError, match="summing to 1"):
        G.resolve_config(splits=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="family"):
        G.resolve_config(family="qwen9")
    with pytest.raises(ValueError, match="fonts"):
        G.resolve_config(fonts=["comic-sans"])


def test_cli_entry_point(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    rc = main_synth([str(out), "--n", "ocr=4,chart=4", "--splits", "0.5,0.25,0.25", "--image-size", "128x96",
                     "--difficulty", 'ocr=hard;chart.bars=[3,3]', "--family", "qwen2_vl", "--no-progress"])
    assert rc == 0 and "train 4" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["image_size"] == [128, 96] and m["family"] == "qwen2_vl" and set(m["n_per_task"]) == {"ocr", "chart"}
    assert m["difficulty"]["ocr"]["level"] == "hard" and m["difficulty"]["chart"]["bars"] == [3, 3]
    assert main_synth([str(tmp_path / "e"), "--tasks", "nope", "--no-progress"]) == 2
    assert "unknown tasks" in capsys.readouterr().err
