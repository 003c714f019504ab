"""Recipes: every shipped TOML parses, documents itself, and the whole stage chain runs a few steps
through the real CLI, data pipeline and tokenizer on a small generated synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl.train.config import config_hash, load_config
from tests.train.test_loop import one_thread  # noqa: F401 (autouse)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CHAIN = ("stage0_text", "stage1_pretrain", "stage2_multitask", "stage3_sft", "lora_finetune")
HEADER = ("# What:", "# Hardware:", "# Time:", "# Command:", "# Smoke:")


def test_shipped_recipes_parse_and_have_headers():
    found = sorted(p.stem for p in RECIPES.glob("*.toml"))
    assert set(CHAIN) <= set(found), found
    for name in found:
        path = RECIPES / f"{name}.toml"
        head = [ln for ln in path.read_text().splitlines() if ln.startswith("#")]
        for key in HEADER:
            assert any(ln.startswith(key) for ln in head), f"{path.name}: header lacks {key!r}"
        assert f"recipes/{name}.toml" in next(ln for ln in head if ln.startswith("# Command:"))
        cfg = load_config(path)
        assert cfg.run.output_dir and (cfg.schedule.max_steps or cfg.schedule.max_minutes)
        assert "_component_" not in path.read_text()


def test_overrides_are_type_checked_and_name_unknown_keys():
    path = RECIPES / "stage0_text.toml"
    cfg = load_config(path, ["optim.lr=5e-4", "run.bf16=false", "model.arch.visual.layers=2",
                             "run.output_dir=/tmp/x", 'data.train=["a.jsonl", "b.jsonl"]'])
    assert cfg.optim.lr == 5e-4 and not cfg.run.bf16 and cfg.model.arch["visual"]["layers"] == 2
    assert cfg.run.output_dir == "/tmp/x" and cfg.data.train == ("a.jsonl", "b.jsonl")
    assert load_config(path, ["data.val=v.jsonl"]).data.val == ("v.jsonl",)
    tasks = load_config(RECIPES / "stage2_multitask.toml", ["data.tasks.ocr=0.5", "data.tasks.dialogue=1"]).data.tasks
    assert tasks["ocr"] == 0.5 and tasks["dialogue"] == 1
    assert config_hash(cfg) != config_hash(load_config(path))
    assert config_hash(load_config(path, ["run.log_every=1"])) == config_hash(load_config(path))
    for bad, msg in [("optim.lrr=1", "optim.lrr"), ("optimiser.lr=1", "unknown table 'optimiser'"),
                     ("optim.lr=fast", "optim.lr: expected a number"), ("run.bf16=1", "run.bf16: expected true"),
                     ("model.arch.visual.depth=2", "unknown key 'depth'"), ("schedule.max_steps", "key=value"),
                     ("stage.policy=stage9", "stage.policy 'stage9'"), ("optim.min_lr=1", "min_lr <= optim.lr"),
                     ("model.arch.hidden_size=2.5", "expected int"), ("optim.lr.x=1", "not a table"),
                     ("lora.enabled=true", "leave stage.policy")]:
        with pytest.raises(ValueError, match=msg):
            load_config(path, [bad])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small synthetic dataset (the project's generator) and a tiny BPE vocabulary trained on it."""
    from qwenvl.data.synth import generate
    from qwenvl.train.data import iter_texts
    from qwenvl.train.tokenizer_train import train_ranks

    root = tmp_path_factory.mktemp("synth")
    tasks = ["caption", "vqa", "count", "grounding", "grounded_caption", "ocr", "document", "chart", "compare",
             "dialogue"]
    generate(root / "data", n_per_task=6, seed=0, splits=(0.5, 0.5, 0.0), image_size=112, tasks=tasks,
             langs=("en",), progress=False)
    ranks = train_ranks(iter_texts(root / "data" / "train.jsonl"), 400, root / "tok" / "qwen.tiktoken")
    n = sum(1 for _ in open(ranks))
    return root, n


def test_stage_chain_smoke_through_the_cli(synth, tmp_path, capsys):
    from qwenvl.cli import main

    root, n_ranks = synth
    data = root / "data"
    common = ["schedule.max_steps=2", "schedule.batch_size=2", "run.progress=false", "run.tensorboard=false",
              "run.eval_batches=1", "run.log_every=1", "data.max_len=1024",
              f'data.train=["{data / "train.jsonl"}"]', f'data.val=["{data / "val.jsonl"}"]']
    shrink = ["model.arch.num_hidden_layers=1", "model.arch.visual.layers=1", f"model.arch.vocab_size={n_ranks + 220}",
              f"model.arch.visual.image_start_id={n_ranks + 214}", f"model.arch.bos_token_id={n_ranks}",
              f"model.arch.eos_token_id={n_ranks}", f"data.tokenizer={root / 'tok'}"]
    prev = None
    for name in CHAIN:
        sets = [*common, f"run.output_dir={tmp_path / name}"]
        sets += shrink if prev is None else [f"model.init={prev}"]
        argv = ["train", str(RECIPES / f"{name}.toml")] + [a for s in sets for a in ("--set", s)]
        assert main(argv) == 0, name
        summary = json.loads(capsys.readouterr().out)
        assert summary["step"] == 2 and summary["val_loss"] is not None, (name, summary)
        prev = summary["export"]
        assert Path(prev, "qwen.tiktoken").is_file()  # the tokenizer travels with every export
    visual = {n: json.loads((tmp_path / n / "final" / "config.json").read_text())["visual"] for n in CHAIN}
    assert (visual["stage1_pretrain"]["image_size"], visual["stage1_pretrain"]["pos_embed_grid"]) == (112, 8)
    # 168 px: the 8x8 table resampled once to 12x12, and config.json says so
    assert (visual["stage2_multitask"]["image_size"], visual["stage2_multitask"].get("pos_embed_grid", 16)) == (168, 12)

    import qwenvl

    pipe = qwenvl.load(prev)  # the merged LoRA export, through the public API
    out = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(next(data.rglob("*.png")))},
                                                  {"type": "text", "text": "What is this?"}]}], max_new_tokens=3)
    assert len(out.token_ids) <= 3
