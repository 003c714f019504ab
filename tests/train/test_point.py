"""Pointing loss (train/point.py): which tokens a record's question names, and the loss against the layer's own
attention, computed the slow way from the q and k the attention module itself uses (packed rows, GQA, both
RoPE kinds), and that it trains the attention toward the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qwenvl.model.decoder as decoder
from qwenvl.families import from_hf_dict
from qwenvl.inputs import ModelInputs
from qwenvl.train.batch import IGNORE, forward_loss
from qwenvl.train.collate import collate
from qwenvl.train.config import AuxConfig
from qwenvl.train.point import PointTap, box_cells, point_loss, record_point, target_boxes
from tests.train.test_loop import FakeExamples, v1_arch, v2_arch


def test_target_boxes_per_task():
    objs = [{"shape": "circle", "colour": "red", "box": [0, 0, 10, 10]},
            {"shape": "circle", "colour": "blue", "box": [20, 0, 30, 10]},
            {"shape": "square", "colour": "red", "box": [40, 0, 50, 10]}]
    assert target_boxes({"target": [1, 2, 3, 4], "objects": objs}) == [[1, 2, 3, 4]]  # VQA: the object asked about
    circles, reds = {"shape": "circle", "colour": None}, {"shape": None, "colour": "red"}  # counting
    assert target_boxes({"target": circles, "objects": objs}) == [[0, 0, 10, 10], [20, 0, 30, 10]]
    assert target_boxes({"target": reds, "objects": objs}) == [[0, 0, 10, 10], [40, 0, 50, 10]]
    assert target_boxes({"box": [5, 5, 9, 9], "objects": objs}) == [[5, 5, 9, 9]]  # grounding
    assert target_boxes({"text_box": [1, 1, 8, 4]}) == [[1, 1, 8, 4]]  # OCR
    assert target_boxes({"target": None, "objects": objs}) == []  # relation / exists: nothing named


def test_box_cells_take_a_fair_share_of_the_cell_or_of_the_box():
    # 100 x 100 on 4 x 4 cells of 25 px
    big = box_cells([[0, 0, 50, 25]], (100, 100), 4, 4)
    assert np.flatnonzero(big).tolist() == [0, 1]
    small = box_cells([[60, 60, 66, 66]], (100, 100), 4, 4)  # inside cell (2, 2)
    assert np.flatnonzero(small).tolist() == [10]
    sliver = box_cells([[0, 0, 50, 26]], (100, 100), 4, 4)  # 1 px into row 1: 2% of those cells, not a fair share
    assert np.flatnonzero(sliver).tolist() == [0, 1]


def test_record_point_marks_the_target_tokens_or_nothing():
    v2 = from_hf_dict(v2_arch("qwen2_5_vl")).vision  # merge 2: grid (1, 4, 6) -> 2 x 3 tokens
    one = ModelInputs(input_ids=[0], positions=torch.zeros(3, 1), image_pixels=torch.zeros(1), image_grid=[(1, 4, 6)])
    meta = {"image_size": [120, 80], "target": [85, 45, 115, 75], "objects": []}
    assert record_point(meta, one, v2).tolist() == [0, 0, 0, 0, 0, 1]
    assert record_point({"image_size": [120, 80], "target": None}, one, v2).tolist() == [-1] * 6
    two = ModelInputs(input_ids=[0], positions=torch.zeros(3, 1), image_pixels=torch.zeros(1),
                      image_grid=[(1, 4, 6), (1, 2, 2)])
    assert record_point(meta, two, v2).tolist() == [-1] * 7  # multi-image: which image is meant is unknown
    v1 = from_hf_dict(v1_arch()).vision  # 4 queries on a 2 x 2 grid
    img = ModelInputs(input_ids=[0], positions=torch.zeros(1), image_pixels=torch.zeros(1, 3, 28, 28))
    assert record_point({"image_size": [28, 28], "box": [0, 14, 14, 28]}, img, v1).tolist() == [0, 0, 1, 0]
    assert record_point(meta, ModelInputs(input_ids=[0], positions=torch.zeros(1)), v1) is None


class PointFake(FakeExamples):
    """One image per example with a made-up target token (every third example has none)."""

    def __getitem__(self, i: int):
        ex = super().__getitem__(i)
        v = self.cfg.vision
        n = v.n_queries if self.cfg.family == "qwen_vl" else 16 // v.spatial_merge_size ** 2
        ex.point = torch.full((n,), -1.0)
        if i % 3:
            ex.point = torch.zeros(n)
            ex.point[i % n] = 1.0
        return ex


def _batch_and_model(arch: dict, seed: int = 0):
    cfg = from_hf_dict(arch)
    torch.manual_seed(seed)
    model = decoder_model(cfg)
    exs = [PointFake(cfg, 6, kinds=("image",))[i] for i in range(6)]
    return model, collate(exs, cfg.bos_token_id, packing=True, max_len=128)


def decoder_model(cfg):
    from qwenvl.model.qwenvl import QwenVLModel

    return QwenVLModel(cfg).float().train()


def _run(model, batch, tap: PointTap):
    forward_loss(model, batch)  # the training forward; the tap keeps the layer's inputs
    slots = model.placeholder_masks(batch.input_ids)[0]
    return point_loss(tap.attn, tap.take(), slots, batch.labels, batch.segment_ids, batch.point)


@pytest.mark.parametrize("arch", [v2_arch("qwen2_5_vl"), v1_arch()], ids=["qwen2_5_vl", "qwen_vl"])
def test_loss_is_the_layers_own_attention_mass_on_the_target(arch, monkeypatch):
    model, batch = _batch_and_model(arch)
    assert batch.input_ids.shape[0] < 6  # packed: several samples per row
    layer = len(model.model.layers) - 1
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (q, k) after RoPE, as the attention itself computes them
    real = decoder.causal_attention
    monkeypatch.setattr(decoder, "causal_attention", lambda q, k, v, *a: (seen.append((q, k)), real(q, k, v, *a))[1])
    tap = PointTap(model.model.layers[layer].self_attn)
    loss, mass = _run(model, batch, tap)
    q_all, k_all = seen[layer]
    h, kv = q_all.shape[1], k_all.shape[1]
    slots = model.placeholder_masks(batch.input_ids)[0]
    ir, ic = slots.nonzero(as_tuple=True)
    nlls, masses = [], []
    for r in range(batch.input_ids.shape[0]):
        for s in batch.segment_ids[r].unique().tolist():
            if s == 0:
                continue
            img = [(j, int(c)) for j, (rr, c) in enumerate(zip(ir.tolist(), ic.tolist(), strict=True)) if rr == r
                   and batch.segment_ids[r, c] == s]
            pt = batch.point[[j for j, _ in img]]
            if not img or (pt < 0).all():
                continue
            cols = [c for _, c in img]
            for p in range(batch.input_ids.shape[1] - 1):  # p predicts labels[p + 1]
                if batch.segment_ids[r, p] != s or batch.labels[r, p + 1] == IGNORE:
                    continue
                probs = torch.stack([(q_all[r, hh, p] @ k_all[r, hh // (h // kv), cols].T / q_all.shape[-1] ** 0.5)
                                     .softmax(-1) for hh in range(h)]).mean(0)
                m = probs[pt > 0].sum()
                nlls.append(-m.log())
                masses.append(float(m.detach()))
    assert len(nlls) > 5
    assert torch.allclose(loss, torch.stack(nlls).mean(), atol=1e-5), (float(loss), float(torch.stack(nlls).mean()))
    assert mass == pytest.approx(float(np.mean(masses)), abs=1e-5)


def test_pointing_moves_the_attention_onto_the_target():
    model, batch = _batch_and_model(v2_arch("qwen2_5_vl"), seed=1)
    tap = PointTap(model.model.layers[1].self_attn)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    masses = []
    for _ in range(30):
        loss, mass = _run(model, batch, tap)
        masses.append(mass)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert masses[-1] > masses[0] + 0.3, masses  # 4 image tokens: chance is 0.25


def test_config_rejects_pointing_without_the_decoder():
    with pytest.raises(ValueError, match="aux.point needs the decoder"):
        AuxConfig(dense=1.0, answer=0.0, point=1.0)


def test_the_loop_trains_with_pointing_and_logs_the_mass(tmp_path):
    import csv

    from qwenvl.train.config import ScheduleConfig
    from qwenvl.train.loop import train
    from tests.train.test_loop import fake_source, make_cfg, model_cfg_of

    cfg = make_cfg(tmp_path, arch=v2_arch("qwen2_5_vl"), aux=AuxConfig(point=1.0),
                   schedule=ScheduleConfig(max_steps=4, batch_size=4))
    mc = model_cfg_of(cfg)
    src = fake_source(mc, n=12)
    src.dataset = PointFake(mc, 12, kinds=("image",))
    assert train(cfg, data=src)["step"] == 4
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert all(0 < float(r["point_mass"]) < 1 for r in rows if r["split"] == "train")
