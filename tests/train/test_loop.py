"""The training loop on tiny random models and fake examples (collated by the real collate()).

Also home of the helpers the other train tests import: tiny v1 / v2 architectures, a deterministic
fake dataset with text-only, one-image and two-image examples, and a config builder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random

import pytest
import torch

from qwenvl.config import QwenVLConfig
from qwenvl.inputs import ModelInputs
from qwenvl.train.batch import IGNORE
from qwenvl.train.collate import collate
from qwenvl.train.config import ModelConfig, OptimConfig, RunConfig, ScheduleConfig, StageConfig, TrainConfig
from qwenvl.train.loop import DataSource, LossModule, build_model, dummy_vision_input, resolve_precision, train
from qwenvl.train.masks import TrainExample

TEXT_VOCAB = 200  # ids below this are "text"; specials sit above


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and a shared 2-core box makes 2 threads spin); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def v1_arch(**over) -> dict:
    """A tiny Qwen-VL v1 config.json (28 px images = 2x2 patches, 4 queries)."""
    arch = {"model_type": "qwen", "vocab_size": 256, "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 192, "seq_length": 256, "use_dynamic_ntk": False,
            "use_logn_attn": False, "bos_token_id": 250, "eos_token_id": 250,
            "visual": {"heads": 2, "image_size": 28, "layers": 2, "mlp_ratio": 2.0, "output_dim": 128,
                       "patch_size": 14, "width": 32, "n_queries": 4, "pos_embed_grid": 2, "image_start_id": 240}}
    arch.update(over)
    return arch


def v2_arch(family: str = "qwen2_5_vl") -> dict:
    """A tiny config.json of a dynamic-resolution family (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe)."""
    text = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, bos_token_id=250, eos_token_id=250,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, num_heads=2, out_hidden_size=64)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, mlp_ratio=1.5, hidden_size=64, hidden_act="quick_gelu")
    elif family == "qwen2_5_vl":
        vision.update(hidden_size=32, intermediate_size=48, fullatt_block_indexes=[1], window_size=56,
                      hidden_act="silu")
    else:  # Qwen3-VL: patch 16, learned 4x4 position table, DeepStack from ViT block 0
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                  "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        vision.update(hidden_size=32, intermediate_size=48, hidden_act="gelu_pytorch_tanh", patch_size=16,
                      num_position_embeddings=16, deepstack_visual_indexes=[0])
        if family == "qwen3_vl_moe":
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24)
    return {"model_type": family, "text_config": text, "vision_config": vision, "image_token_id": 241,
            "video_token_id": 242, "vision_start_token_id": 243, "vision_end_token_id": 244}


class FakeExamples:
    """Map-style dataset of TrainExamples: kinds cycle text / image / two images (v1 or v2 layout)."""

    def __init__(self, model_cfg: QwenVLConfig, n: int = 24, seed: int = 0, kinds=("text", "image", "multi"),
                 image_size: int | None = None) -> None:
        self.cfg, self.n, self.seed, self.kinds = model_cfg, n, seed, kinds
        self.image_size = image_size or model_cfg.vision.image_size

    def __len__(self) -> int:
        return self.n

    def _image(self, g: torch.Generator) -> tuple[list[int], torch.Tensor, tuple]:
        c = self.cfg
        if c.family == "qwen_vl":
            ids = [c.image_start_id] + [c.image_start_id + 2] * c.vision.n_queries + [c.image_start_id + 1]
            return ids, torch.randn(1, 3, self.image_size, self.image_size, generator=g), ()
        v, grid = c.vision, (1, 4, 4)
        n_tok = 16 // v.spatial_merge_size ** 2
        ids = [c.vision_start_token_id] + [c.image_token_id] * n_tok + [c.vision_end_token_id]
        return ids, torch.randn(16, 3 * v.temporal_patch_size * v.patch_size ** 2, generator=g), grid

    def __getitem__(self, i: int) -> TrainExample:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        rng = random.Random(self.seed * 1000 + i)
        kind = self.kinds[i % len(self.kinds)]
        # a learnable pattern: an arithmetic sequence of text ids after a random prompt
        a, b = rng.randrange(TEXT_VOCAB), rng.randrange(1, 7)
        prompt = [rng.randrange(TEXT_VOCAB) for _ in range(rng.randrange(2, 5))]
        answer = [(a + b * t) % TEXT_VOCAB for t in range(rng.randrange(6, 12))]
        ids, pixels, grids = list(prompt), [], []
        for _ in range({"text": 0, "image": 1, "multi": 2}[kind]):
            img_ids, px, grid = self._image(g)
            ids += img_ids
            pixels.append(px)
            if grid:
                grids.append(grid)
        labels = [IGNORE] * len(ids) + answer
        ids += answer
        pos = torch.arange(len(ids))
        inputs = ModelInputs(input_ids=ids, positions=pos if self.cfg.family == "qwen_vl" else pos.expand(3, -1),
                             image_pixels=torch.cat(pixels) if pixels else None, image_grid=grids)
        return TrainExample(inputs, labels)


def fake_source(model_cfg: QwenVLConfig, n: int = 24, seed: int = 0, packing: bool = False, **kw) -> DataSource:
    return DataSource(FakeExamples(model_cfg, n, seed, **kw),
                      lambda exs: collate(exs, model_cfg.bos_token_id, packing, 128))


def make_cfg(tmp_path, arch: dict | None = None, precision: str = "fp32", **sections) -> TrainConfig:
    """A small config writing to tmp_path/run; sections override whole tables. fp32 unless `precision` says
    otherwise, whatever RunConfig's own default ("auto", which would follow this machine's CPU)."""
    base = dict(model=ModelConfig(arch=arch or v1_arch()),
                stage=StageConfig(policy="full"),
                optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2),
                schedule=ScheduleConfig(max_steps=6, batch_size=4),
                run=RunConfig(output_dir=str(tmp_path / "run"), log_every=1, progress=False, tensorboard=False,
                              seed=0))
    base.update(sections)
    base["run"] = dataclasses.replace(base["run"], precision=precision)
    return TrainConfig(**base)


def model_cfg_of(cfg: TrainConfig) -> QwenVLConfig:
    from qwenvl.families import from_hf_dict

    return from_hf_dict(cfg.model.arch)


# ----------------------------------------------------------------------------------------------


def test_train_loss_falls_and_writes_outputs(tmp_path):
    cfg = make_cfg(tmp_path, schedule=ScheduleConfig(max_steps=12, batch_size=4),
                   run=RunConfig(output_dir=str(tmp_path / "run"), log_every=3, eval_every=6, eval_batches=2,
                                 ckpt_every=6, progress=False, tensorboard=False))
    mc = model_cfg_of(cfg)
    s = train(cfg, data=fake_source(mc, n=8), val_data=fake_source(mc, n=8, seed=1))
    assert s["step"] == 12 and s["stopped"] == "max_steps"
    first, last = s["losses"][1], s["losses"][12]
    assert last < first * 0.8, (first, last)
    assert set(s["val_losses"]) == {6, 12} and s["val_loss"] == s["val_losses"][12]
    out = tmp_path / "run"
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == [3, 6, 9, 12]
    assert float(rows[0]["tokens_per_s"]) > 0 and float(rows[0]["lr"]) > 0
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000006", "step_00000012"]
    # the export is a plain HF-layout folder that the production loader reads back
    from qwenvl.weights import load_model

    loaded = load_model(out / "final")
    assert loaded.cfg == mc and s["trainable"]["llm"] > 0


def test_bf16_autocast_and_gradient_checkpointing_train(tmp_path):
    cfg = make_cfg(tmp_path, precision="bf16", run=RunConfig(output_dir=str(tmp_path / "run"),
                                                             gradient_checkpointing=True, progress=False,
                                                             tensorboard=False, export=False))
    s = train(cfg, data=fake_source(model_cfg_of(cfg), n=8))
    assert s["precision"] == "bf16" and s["precision_reason"] == "run.precision = bf16"
    assert all(torch.isfinite(torch.tensor(v)) for v in s["losses"].values())
    assert s["losses"][6] < s["losses"][1]


@pytest.mark.parametrize("flags, expect", [({"fpu", "avx2"}, "fp32"), ({"avx512f", "avx512_bf16"}, "bf16"),
                                           ({"amx_bf16", "amx_tile"}, "bf16")], ids=["plain", "avx512_bf16", "amx"])
def test_auto_precision_follows_the_cpu_flags_and_is_recorded(tmp_path, monkeypatch, flags, expect):
    """run.precision "auto": bf16 autocast only on a CPU with native bf16 (patched /proc/cpuinfo flags), fp32
    elsewhere; the choice is in the summary, metrics.csv and the checkpoint's meta.json."""
    import qwenvl.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
    assert resolve_precision("auto")[0] == expect
    assert resolve_precision("fp32") == ("fp32", "run.precision = fp32")  # explicit settings win
    assert resolve_precision("bf16") == ("bf16", "run.precision = bf16")
    seen = []
    real_autocast = torch.autocast
    # the loop's autocast names its dtype (model/attention.sdpa's inner "off" region does not)
    monkeypatch.setattr(torch, "autocast",
                        lambda *a, **k: ("dtype" in k and seen.append(k["enabled"])) or real_autocast(*a, **k))
    cfg = make_cfg(tmp_path, precision="auto", schedule=ScheduleConfig(max_steps=2, batch_size=2),
                   run=RunConfig(output_dir=str(tmp_path / "run"), progress=False, tensorboard=False, export=False))
    s = train(cfg, data=fake_source(model_cfg_of(cfg), n=4))
    assert s["precision"] == expect and s["precision_reason"].startswith("auto: cpu ")
    assert seen and set(seen) == {expect == "bf16"}  # the autocast the steps ran under
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert {r["precision"] for r in rows} == {expect}
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "meta.json").read_text())
    assert meta["precision"] == expect


def test_gradient_checkpointing_and_accumulation_keep_the_math(tmp_path):
    """batch 4 x accum 1 == batch 2 x accum 2 (token-weighted mean), with or without checkpointing."""
    results = []
    for i, (bs, acc, ckpt) in enumerate([(4, 1, False), (2, 2, False), (4, 1, True)]):
        cfg = make_cfg(tmp_path / str(i), schedule=ScheduleConfig(max_steps=3, batch_size=bs, grad_accum=acc),
                       run=RunConfig(output_dir=str(tmp_path / str(i) / "run"), gradient_checkpointing=ckpt,
                                     progress=False, tensorboard=False, export=False))
        results.append(train(cfg, data=fake_source(model_cfg_of(cfg), n=8))["losses"])
    for other in results[1:]:
        for k in results[0]:
            assert abs(results[0][k] - other[k]) < 1e-5, (k, results[0][k], other[k])


@pytest.mark.parametrize("arch", [v1_arch(), v2_arch("qwen2_5_vl"), v2_arch("qwen2_vl")],
                         ids=["v1", "qwen2_5_vl", "qwen2_vl"])
def test_text_only_batch_still_touches_every_trainable_param(tmp_path, arch):
    """Pain point 14: a text-only batch must give every trainable tensor a gradient (zero for the ViT)."""
    cfg = make_cfg(tmp_path, arch=arch)
    model = build_model(cfg)
    batch = fake_source(model.cfg, kinds=("text",)).collate([FakeExamples(model.cfg, kinds=("text",))[0]])
    assert batch.image_pixels is None
    for dummy, expect_all in ((dummy_vision_input(model.cfg), True), (None, False)):
        model.zero_grad(set_to_none=True)
        LossModule(model, dummy)(batch).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        if expect_all:
            assert missing == []
            assert all(float(p.grad.abs().sum()) == 0 for n, p in model.named_parameters() if n.startswith("visual."))
        else:
            assert missing and all(n.startswith("visual.") for n in missing)


def test_minutes_budget_calibrates_a_step_count(tmp_path):
    cfg = make_cfg(tmp_path, schedule=ScheduleConfig(max_minutes=0.04, batch_size=2, calibrate_steps=2),
                   optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_ratio=0.1),
                   run=RunConfig(output_dir=str(tmp_path / "run"), progress=False, tensorboard=False, export=False))
    s = train(cfg, data=fake_source(model_cfg_of(cfg), n=8))
    assert s["total_steps"] >= 1 and s["step"] >= 1
    assert s["step"] == s["total_steps"] or s["stopped"] == "max_minutes"
    assert s["elapsed_s"] < 0.04 * 60 + 20  # the budget plus setup, eval and export on a busy machine


def test_existing_run_needs_resume(tmp_path):
    cfg = make_cfg(tmp_path, schedule=ScheduleConfig(max_steps=1, batch_size=2),
                   run=RunConfig(output_dir=str(tmp_path / "run"), progress=False, tensorboard=False, export=False))
    data = fake_source(model_cfg_of(cfg), n=4)
    train(cfg, data=data)
    with pytest.raises(ValueError, match="--resume"):
        train(cfg, data=data)
    assert train(cfg, data=data, resume=True)["step"] == 1  # nothing left to do, still a clean finish


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_interrupt_leaves_no_partial_files(tmp_path, how):
    """Ctrl-C, or SIGTERM (turned into KeyboardInterrupt by train), mid-run: only complete checkpoints remain."""
    import os
    import signal

    cfg = make_cfg(tmp_path, schedule=ScheduleConfig(max_steps=6, batch_size=2),
                   run=RunConfig(output_dir=str(tmp_path / "run"), ckpt_every=2, progress=False, tensorboard=False))
    src = fake_source(model_cfg_of(cfg), n=8)
    calls = {"n": 0}

    def interrupting(exs):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th batch = step 4, after the step-2 checkpoint
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises KeyboardInterrupt right here
                raise AssertionError("SIGTERM did not interrupt the run")
            raise KeyboardInterrupt
        return src.collate(exs)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data=DataSource(src.dataset, interrupting))
    out = tmp_path / "run"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    assert not (out / "final").exists() and not list(out.glob(".tmp*"))


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    cfg = make_cfg(tmp_path, schedule=ScheduleConfig(max_steps=4, batch_size=2),
                   run=RunConfig(output_dir=str(tmp_path / "run"), ckpt_every=1, progress=False, tensorboard=False))
    src = fake_source(model_cfg_of(cfg), n=8, kinds=("image",))
    calls = {"n": 0}

    def poisoned(exs):
        batch = src.collate(exs)
        calls["n"] += 1
        if calls["n"] == 3:
            batch.image_pixels = torch.full_like(batch.image_pixels, float("nan"))
        return batch

    with pytest.raises(FloatingPointError, match="step 3"):
        train(cfg, data=DataSource(src.dataset, poisoned))
    from qwenvl.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path / "run").name == "step_00000002"
