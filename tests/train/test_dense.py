"""Dense vision targets (train/dense.py): cell geometry on hand-made scenes, the token layout the head
reads, and the loop: the head trains, stays out of the export, and comes back for the next stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qwenvl.data.scenes import COLOURS, SHAPES, SIZES, Obj
from qwenvl.families import from_hf_dict
from qwenvl.inputs import ModelInputs
from qwenvl.train.config import AuxConfig, ScheduleConfig, StageConfig
from qwenvl.train.dense import GLYPHS, IGNORE, TARGETS, TEXT_CLASS, DenseHead, image_targets, record_targets
from qwenvl.train.loop import AUX_FILE, train
from tests.train.test_loop import FakeExamples, fake_source, make_cfg, model_cfg_of, v1_arch, v2_arch

COL = {name: i for i, (name, _) in enumerate(TARGETS)}


def obj(shape: str, colour: str, size: str, cx: int, cy: int, r: int) -> dict:
    return Obj(shape, colour, size, cx, cy, r).as_dict()


def test_centre_cell_holds_the_object_and_the_rest_is_background():
    # 100 x 100 px on a 4 x 4 grid: cells of 25 px; the circle's centre (60, 30) is in row 1, col 2
    meta = {"image_size": [100, 100], "objects": [obj("circle", "red", "large", 60, 30, 8)]}
    t = image_targets(meta, 4, 4)
    i = 1 * 4 + 2
    assert t[i, COL["centres"]] == 1 and (t[:, COL["centres"]].sum() == 1)
    assert t[i, COL["colour"]] == list(COLOURS).index("red") + 1
    assert t[i, COL["shape"]] == SHAPES.index("circle") and t[i, COL["size"]] == list(SIZES).index("large")
    # the centre sits at (60 - 50) / 25 = 0.4 across and (30 - 25) / 25 = 0.2 down the cell: 4x4 bin (0, 1)
    assert t[i, COL["offset"]] == 0 * 4 + 1
    # box [52, 22, 69, 39] overlaps cells (0..1, 2): the cell holding most of it is labelled, far cells are 0
    assert t[i, COL["cover"]] == list(COLOURS).index("red") + 1
    assert t[15, COL["cover"]] == 0 and t[0, COL["cover"]] == 0
    others = np.delete(np.arange(16), i)
    assert (t[others, COL["colour"]] == IGNORE).all() and (t[:, COL["glyph"]] == IGNORE).all()


def test_two_centres_in_one_cell_are_counted():
    meta = {"image_size": [80, 80], "objects": [obj("square", "blue", "small", 5, 5, 3),
                                                obj("star", "green", "small", 15, 15, 3)]}
    t = image_targets(meta, 2, 2)
    assert t[0, COL["centres"]] == 2 and t[0, COL["colour"]] == list(COLOURS).index("blue") + 1  # the first one
    assert t[1:, COL["centres"]].tolist() == [0, 0, 0]


def test_glyph_targets_follow_the_characters_of_upright_text():
    from qwenvl.data.render import resolve_fonts

    font = resolve_fonts(None)[0]
    meta = {"image_size": [80, 20], "ocr_text": "AW", "text_box": [0, 0, 80, 20], "font": font, "font_size": 40,
            "angle": 0.0}
    t = image_targets(meta, 1, 8)
    glyphs = [GLYPHS[g - 1] for g in t[:, COL["glyph"]]]
    assert glyphs[0] == "A" and glyphs[-1] == "W" and glyphs == sorted(glyphs)  # A...A W...W
    assert (t[:, COL["cover"]] == TEXT_CLASS).all()
    tilted = image_targets({**meta, "angle": 20.0}, 1, 8)  # no glyph positions for strongly rotated text
    assert (tilted[:, COL["glyph"]] == IGNORE).all()


def inputs(grids: list[tuple[int, int, int]]) -> ModelInputs:
    """ModelInputs with these image grids (the pixels are not read)."""
    return ModelInputs(input_ids=[0], positions=torch.zeros(3, 1), image_pixels=torch.zeros(1), image_grid=grids)


def test_record_targets_lay_cells_out_in_feature_token_order():
    cfg = from_hf_dict(v2_arch("qwen2_5_vl"))  # merge 2
    meta = {"image_size": [120, 80], "objects": [obj("circle", "red", "large", 100, 70, 6)]}
    grid = (1, 4, 6)  # patches -> 2 x 3 merged tokens; sub 2 -> 4 x 6 cells
    got = record_targets(meta, inputs([grid]), cfg.vision, 2)
    assert got.shape == (6, 4, len(TARGETS))
    cells = image_targets(meta, 4, 6)
    for r in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    assert torch.equal(got[r * 3 + c, i * 2 + j], torch.from_numpy(cells[(2 * r + i) * 6 + 2 * c + j]))
    # several images (or no geometry): every cell IGNORE, one row per feature token
    two = record_targets(meta, inputs([grid, (1, 2, 2)]), cfg.vision, 2)
    assert two.shape == (7, 4, len(TARGETS)) and (two == IGNORE).all()
    v1 = from_hf_dict(v1_arch())
    v1_one = ModelInputs(input_ids=[0], positions=torch.zeros(1), image_pixels=torch.zeros(1, 3, 28, 28))
    assert record_targets(meta, v1_one, v1.vision, 1).shape == (v1.vision.n_queries, 1, len(TARGETS))
    assert record_targets(meta, ModelInputs(input_ids=[0], positions=torch.zeros(1)), v1.vision, 1) is None


def test_head_loss_is_cross_entropy_over_the_known_cells():
    torch.manual_seed(0)
    head = DenseHead(16, 1)
    feats = torch.randn(5, 16)
    targets = torch.full((5, 1, len(TARGETS)), IGNORE)
    targets[:, 0, COL["cover"]] = torch.tensor([0, 1, 2, 0, 1])
    loss, acc = head(feats, targets)
    logits = head.proj(head.norm(feats))[:, : TARGETS[0][1]]
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, targets[:, 0, 0]))
    assert set(acc) == {"cover"}


class DenseFake(FakeExamples):
    """FakeExamples whose images carry dense targets of a fixed made-up scene."""

    def __getitem__(self, i: int):
        ex = super().__getitem__(i)
        meta = {"image_size": [56, 56], "objects": [obj("circle", "red", "small", 10 + i % 30, 20, 4)]}
        ex.dense = record_targets(meta, ex.inputs, self.cfg.vision, 2)  # two images: all IGNORE
        return ex


@pytest.mark.parametrize("arch", [v2_arch("qwen2_5_vl"), v1_arch()], ids=["qwen2_5_vl", "qwen_vl"])
def test_dense_head_trains_stays_out_of_the_export_and_returns_next_stage(tmp_path, arch):
    from safetensors.torch import load_file

    from qwenvl.weights import load_model

    cfg = make_cfg(tmp_path, arch=arch, aux=AuxConfig(dense=1.0, dense_sub=2),
                   schedule=ScheduleConfig(max_steps=8, batch_size=4))
    mc = model_cfg_of(cfg)
    src = fake_source(mc, n=12)
    src.dataset = DenseFake(mc, 12)
    s = train(cfg, data=src)
    final = tmp_path / "run" / "final"
    loaded = load_model(final)  # strict: an aux key in model.safetensors would be refused by name
    assert not any("aux" in k for k in loaded.state_dict())
    head = load_file(final / AUX_FILE)
    assert set(head) == {"norm.weight", "norm.bias", "proj.weight", "proj.bias"}
    assert s["step"] == 8
    # stage 2 from the export: the head comes back as trained; a vision-only stage leaves the decoder alone
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=None, init=str(final)),
                               stage=StageConfig(policy="stage1"), aux=AuxConfig(dense=1.0, dense_sub=2, answer=0.0),
                               run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / "run2")),
                               schedule=ScheduleConfig(max_steps=3, batch_size=4))
    from qwenvl.train.loop import attach_dense_head, build_model

    m = build_model(cfg2)
    attach_dense_head(m, cfg2)
    assert all(torch.equal(v, head[k]) for k, v in m.aux_dense.state_dict().items())
    src2 = fake_source(mc, n=12)
    src2.dataset = DenseFake(mc, 12)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    train(cfg2, data=src2)
    after = load_model(tmp_path / "run2" / "final").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed), sorted(changed)[:5]
