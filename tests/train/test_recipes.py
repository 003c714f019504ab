"""Recipes: every shipped TOML parses, documents itself, and the whole stage chain runs a few steps
through the real CLI, data pipeline and tokenizer on a small generated synthetic dataset."""

from __future__ import annotations

import csv
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


def test_precision_defaults_to_auto_and_the_old_bf16_key_still_reads(tmp_path):
    # The committed recipes still say bf16 = true: their hashes are recorded in the shipped models
    # (tests/test_shipped_model.py), so they move to precision = "auto" when the models are retrained.
    bare = tmp_path / "bare.toml"
    bare.write_text('[model]\narch = { model_type = "qwen" }\n')
    assert load_config(bare).run.precision == "auto"
    old = tmp_path / "old.toml"
    old.write_text('[model]\narch = { model_type = "qwen" }\n[run]\nbf16 = true\n')
    assert load_config(old).run.precision == "bf16"
    assert load_config(old, ["run.bf16=false"]).run.precision == "fp32"
    assert load_config(old, ["run.precision=auto"]).run.precision == "auto"  # an override wins over the old key
    old.write_text('[model]\narch = { model_type = "qwen" }\n[run]\nbf16 = true\nprecision = "fp32"\n')
    with pytest.raises(ValueError, match="set run.precision only"):
        load_config(old)


def _inline_arch_recipe(tmp_path) -> Path:
    """stage0_text.toml with its config.json file written inline as [model.arch] tables."""
    arch = json.loads((RECIPES / "arch" / "qwenvl_tiny.json").read_text())

    def table(name: str, d: dict) -> str:
        rows = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
        subs = [table(f"{name}.{k}", v) for k, v in d.items() if isinstance(v, dict)]
        return "\n".join([f"[{name}]", *rows, "", *subs])

    text = (RECIPES / "stage0_text.toml").read_text()
    text = text.replace('config = "recipes/arch/qwenvl_tiny.json"', "").replace("[model]\n", "", 1)
    path = tmp_path / "stage0_inline.toml"
    path.write_text(table("model.arch", arch) + "\n" + text)
    return path


def test_overrides_are_type_checked_and_name_unknown_keys(tmp_path):
    path = _inline_arch_recipe(tmp_path)
    assert load_config(RECIPES / "stage0_text.toml").model.config == "recipes/arch/qwenvl_tiny.json"
    swapped = load_config(RECIPES / "stage0_text.toml", ["model.config=recipes/arch/qwen2_5_vl_tiny.json"])
    assert swapped.model.config.endswith("qwen2_5_vl_tiny.json")  # how recipes/tiny_qwen2_5_vl.sh swaps the arch
    cfg = load_config(path, ["optim.lr=5e-4", "run.precision=fp32", "model.arch.visual.layers=2",
                             "run.output_dir=/tmp/x", 'data.train=["a.jsonl", "b.jsonl"]'])
    assert cfg.optim.lr == 5e-4 and cfg.run.precision == "fp32" and cfg.model.arch["visual"]["layers"] == 2
    assert cfg.run.output_dir == "/tmp/x" and cfg.data.train == ("a.jsonl", "b.jsonl")
    assert load_config(path, ["data.val=v.jsonl"]).data.val == ("v.jsonl",)
    tasks = load_config(RECIPES / "stage2_multitask.toml", ["data.tasks.ocr=0.5", "data.tasks.dialogue=1"]).data.tasks
    assert tasks["ocr"] == 0.5 and tasks["dialogue"] == 1
    assert config_hash(cfg) != config_hash(load_config(path))
    assert config_hash(load_config(path, ["run.log_every=1"])) == config_hash(load_config(path))
    for bad, msg in [("optim.lrr=1", "optim.lrr"), ("optimiser.lr=1", "unknown table 'optimiser'"),
                     ("optim.lr=fast", "optim.lr: expected a number"), ("run.bf16=1", "run.bf16: expected true"),
                     ("run.precision=fp16", "run.precision 'fp16' not one of"),
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
    arch = json.loads((RECIPES / "arch" / "qwenvl_tiny.json").read_text())  # the shipped arch, shrunk
    arch.update(num_hidden_layers=1, vocab_size=n_ranks + 220, bos_token_id=n_ranks, eos_token_id=n_ranks)
    arch["visual"].update(layers=1, image_start_id=n_ranks + 214)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    shrink = [f"model.config={tmp_path / 'arch.json'}", f"data.tokenizer={root / 'tok'}"]
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
    # 140 px: the 8x8 table resampled once to 10x10, and config.json says so
    assert (visual["stage2_multitask"]["image_size"], visual["stage2_multitask"].get("pos_embed_grid", 16)) == (140, 10)

    import qwenvl

    pipe = qwenvl.load(prev)  # the merged LoRA export, through the public API
    out = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(next(data.rglob("*.png")))},
                                                  {"type": "text", "text": "What is this?"}]}], max_new_tokens=3)
    assert len(out.token_ids) <= 3


def test_qwen2_5_vl_script_runs_the_same_recipes(tmp_path):
    """recipes/tiny_qwen2_5_vl.sh: stage 0, the vision pre-training and stages 2-3 on the tiny Qwen2.5-VL config,
    video included."""
    import os
    import subprocess
    import sys

    from qwenvl.data.synth import generate

    data = tmp_path / "data"
    tasks = ["vqa", "count", "grounding", "ocr", "caption", "grounded_caption", "video"]
    for name, level, seed in (("synth25", "medium", 2), ("synth25_easy", "easy", 3)):
        generate(data / name, n_per_task=4, seed=seed, splits=(0.5, 0.25, 0.25), image_size=140, tasks=tasks,
                 family="qwen2_5_vl", difficulty=level, progress=False)
    # the arch's special-token ids assume 4,096 ranks: the shipped vocabulary's
    ranks = RECIPES.parent / "qwenvl" / "assets" / "qwenvl-tiny-qwen-vl" / "qwen.tiktoken"
    env = dict(os.environ, DATA=str(data), RANKS=str(ranks), LIMIT="2", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               EXTRA="--set schedule.max_steps=2 --set run.eval_batches=1 --set run.progress=false")
    out = tmp_path / "tiny25"
    run = subprocess.run(["bash", str(RECIPES / "tiny_qwen2_5_vl.sh"), str(out)], cwd=RECIPES.parent, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in ("stage0_text", "stage1_vision", "stage2_multitask", "stage3_sft"):
        cfg = json.loads((out / stage / "final" / "config.json").read_text())
        assert cfg["model_type"] == "qwen2_5_vl" and (out / stage / "final" / "tokenizer.json").is_file()
        # the dense head trains from stage 1 on and travels beside the exports, never inside them
        assert (out / stage / "final" / "aux_dense.safetensors").is_file() == (stage != "stage0_text")
        rows = list(csv.DictReader(open(out / stage / "metrics.csv")))
        assert any(r["dense_cover"] for r in rows) == (stage != "stage0_text"), stage
    from qwenvl.weights import load_model

    assert not any("aux" in k for k in load_model(out / "stage3_sft" / "final").state_dict())
    summary = json.loads((out / "eval" / "stage3_sft.json").read_text())["summary"]
    assert summary["video"]["n"] == 1 and summary["grounding"]["n"] == 1


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_moe"])
def test_recipe_chain_runs_unchanged_on_qwen3_vl(model_type, tmp_path, capsys):
    """Every recipe (stage 0-3, LoRA) a few steps on a tiny Qwen3-VL (dense / MoE) config, the tokenizer folder
    exported for that family, data with 0-1000 JSON boxes and video clips; then eval and chat on the result.
    Only what the recipe files pin to the v1 tower is overridden (stage.image_size: v2+ take a pixel budget)."""
    from qwenvl.cli import main
    from qwenvl.data.synth import generate
    from qwenvl.train.data import iter_texts
    from qwenvl.train.tokenizer_export import write_qwen2_tokenizer
    from qwenvl.train.tokenizer_train import train_ranks

    data = tmp_path / "data"
    generate(data, n_per_task=3, seed=4, splits=(0.5, 0.5, 0.0), image_size=112, langs=("en",), family="qwen3_vl",
             tasks=["caption", "vqa", "count", "grounding", "grounded_caption", "ocr", "document", "chart",
                    "compare", "dialogue", "video"], progress=False)
    ranks = train_ranks(iter_texts(data / "train.jsonl"), 400, tmp_path / "ranks" / "qwen.tiktoken")
    n = sum(1 for _ in open(ranks))
    tok = write_qwen2_tokenizer(ranks, tmp_path / "tok", min_pixels=64 * 64, max_pixels=128 * 128,
                                family="qwen3_vl")
    arch = json.loads((RECIPES / "arch" / f"{model_type}_tiny.json").read_text())  # shrunk to this vocabulary
    arch["text_config"].update(num_hidden_layers=2, vocab_size=n + 20, bos_token_id=n, eos_token_id=n + 2)
    arch["vision_config"].update(depth=2, deepstack_visual_indexes=[0, 1])
    arch.update(image_token_id=n + 12, video_token_id=n + 13, vision_start_token_id=n + 9, vision_end_token_id=n + 10,
                bos_token_id=n, eos_token_id=n + 2)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    common = ["schedule.max_steps=2", "schedule.batch_size=2", "run.progress=false", "run.tensorboard=false",
              "run.eval_batches=1", "run.log_every=1", "data.max_len=1024", "stage.image_size=0",
              "stage.resize_pos_embed=false", "data.max_pixels=16384", "data.tasks.video=0.2",
              f'data.train=["{data / "train.jsonl"}"]', f'data.val=["{data / "val.jsonl"}"]']
    prev = None
    for name in CHAIN:
        sets = [*common, f"run.output_dir={tmp_path / name}"]
        sets += [f"model.config={tmp_path / 'arch.json'}", f"data.tokenizer={tok}"] if prev is None \
            else [f"model.init={prev}"]
        argv = ["train", str(RECIPES / f"{name}.toml")] + [a for s in sets for a in ("--set", s)]
        assert main(argv) == 0, name
        summary = json.loads(capsys.readouterr().out)
        assert summary["step"] == 2 and summary["val_loss"] is not None, (name, summary)
        prev = summary["export"]
        cfg = json.loads(Path(prev, "config.json").read_text())
        assert cfg["model_type"] == model_type and Path(prev, "tokenizer.json").is_file()
    assert main(["eval", prev, str(data / "val.jsonl"), "--limit", "12", "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert report["video"]["n"] >= 1 and report["grounding"]["n"] >= 1
    capsys.readouterr()
    image = str(next(data.rglob("*.png")))
    assert main(["chat", prev, "What is this?", "--image", image, "--max-new-tokens", "3"]) == 0
