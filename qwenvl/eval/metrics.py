"""Evaluation metrics: VQA accuracy, exact match, ANLS, relaxed accuracy, IoU / grounding hits, CIDEr-D,
multiple choice by likelihood, and per-task aggregation. Written from the definitions in
shared/reference/eval-metrics.md (4.1); every function scores ONE example and returns a float in [0, 1]
(CIDEr: a corpus, x10 scale), so a run's score is the mean that `aggregate` takes.

Definitional choices (each follows a reference harness named in shared/reference/eval-metrics.md 4.1):

* VQA accuracy with >= 10 GT answers is the official VQA script's (Qwen-VL eval_mm/vqa_eval.py): the prediction
  gets the whole normaliser (`normalize_vqa_answer`); the GT answers, taken as shipped pre-normalised, get only
  the punctuation step (`process_punctuation`, no lower-casing, number words or articles), and only when they are
  not all the same string; score = mean over i of min(1, #{j != i : a_j == pred} / 3), leaving answers out by
  POSITION. gt_norm="full" normalises every GT answer fully instead (VLMEvalKit's `process_line`). With fewer
  than 10 answers (our synthetic data has 1; the leave-one-out rule would give 0 for one answer and cap 2..9
  below 1): 1.0 if the normalised prediction equals any fully normalised answer, else 0.0.
* ANLS is Qwen-VL's eval_mm/infographicsvqa_eval.py (= VLMEvalKit `anls_compute`, lmms-eval `anls`): the
  Levenshtein distance is taken between the lower-cased, stripped, whitespace-collapsed strings, but the length
  that divides it is max(len(gt.upper()), len(pred.upper())) of the RAW strings (so "  ab  cd  " vs "abcd" is
  NL = 1/10, not 1/5); score = 1 - min NL over GTs, zeroed when that is < tau (so kept at exactly tau).
* Relaxed accuracy (ChartQA): both strings stripped; if both parse as finite floats ("%" suffix -> /100) and the
  GT is non-zero: |pred - gt| / |gt| <= 5 %; otherwise case-insensitive exact match. No thousands separators.
* IoU uses continuous [x1, y1, x2, y2] coordinates (area = w * h, no "+1", torchvision's `box_area`); a
  non-positive union gives 0.
* Grounding parses only the FIRST box of the output, so no scale heuristic ever guesses between per mille and
  pixels. Qwen-VL (v1) boxes are read as Qwen-VL's eval_mm/evaluate_grounding.py reads them
  (`qwen_vl_eval_box`: per mille / 999 * (w, h), float32, IoU in float32); the other families go through the
  version-aware codec (original-image pixels). A hit is IoU >= thr.

Must not: import the model, tokenizers or heavy packages; the runner builds log-prob functions on the model.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from qwenvl.config import QWEN_VL
from qwenvl.eval.cider import cider, tokenize_caption
from qwenvl.eval.vqa_norm import normalize_vqa_answer, process_punctuation
from qwenvl.processing.grounding import parse_boxes

__all__ = [
    "aggregate",
    "anls",
    "choose_by_likelihood",
    "cider",
    "exact_match",
    "grounding_hit",
    "iou",
    "levenshtein",
    "mc_accuracy",
    "normalize_simple",
    "normalize_vqa_answer",
    "qwen_vl_eval_box",
    "relaxed_accuracy",
    "tokenize_caption",
    "vqa_accuracy",
    "xywh_to_xyxy",
]


def _answers(gts: str | Sequence[str], what: str) -> list[str]:
    out = [gts] if isinstance(gts, str) else list(gts)
    if not out:
        raise ValueError(f"{what} needs at least one ground-truth answer")
    return out


def normalize_simple(s: str) -> str:
    """Lower-case, strip, collapse whitespace runs to one space."""
    return " ".join(s.lower().split())


# ------------------------------------------------------------------------- VQA / exact match

VQA_CONSENSUS_ANSWERS = 10  # the VQA protocol's 10 human answers per question


def vqa_accuracy(pred: str, answers: Sequence[str], gt_norm: str = "official") -> float:
    """VQA accuracy of one prediction (see the module docstring for the reference it follows).

    With n >= 10 answers: mean over i of min(1, #{j != i : a_j == pred} / 3), so 1, 2, 3, >= 4 matching humans
    out of 10 give 0.3, 0.6, 0.9, 1.0. gt_norm="official": the GT answers get only `process_punctuation`, and
    only when they differ, e.g. pred "dog" vs ["dog."] * 3 + ["cat"] * 7 -> 0.9 but vs ["dog."] * 10 -> 0.0, and
    "cat" vs ["The cat"] * 3 + ["dog"] * 7 -> 0.0; gt_norm="full" normalises them like the prediction (1.0, 0.9
    for the last two). With fewer answers: fully normalised exact match against any answer.
    """
    answers = _answers(answers, "vqa_accuracy")
    if gt_norm not in ("official", "full"):
        raise ValueError(f"gt_norm must be 'official' or 'full', got {gt_norm!r}")
    p = normalize_vqa_answer(pred)
    if len(answers) < VQA_CONSENSUS_ANSWERS:
        return float(p in {normalize_vqa_answer(a) for a in answers})
    if gt_norm == "full":
        gts = [normalize_vqa_answer(a) for a in answers]
    else:
        gts = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    matches = [g == p for g in gts]
    total = sum(matches)
    # Leaving out answer i (by position) removes one match exactly when answer i itself matches.
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(gts)


_NORMALIZERS: dict[str, Callable[[str], str]] = {
    "none": lambda s: s,
    "simple": normalize_simple,
    "vqa": normalize_vqa_answer,
}


def exact_match(pred: str, gt: str | Sequence[str], normalize: str | Callable[[str], str] = "simple") -> float:
    """1.0 if the normalised prediction equals a normalised GT (any of a list), else 0.0.

    normalize: "none" (byte-exact), "simple" (lower/strip/collapse whitespace), "vqa" (`normalize_vqa_answer`),
    or any str -> str callable.
    """
    fn = _NORMALIZERS[normalize] if isinstance(normalize, str) else normalize
    p = fn(pred)
    return float(any(fn(g) == p for g in _answers(gt, "exact_match")))


# ------------------------------------------------------------------------- ANLS


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each costs 1), O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, gts: str | Sequence[str], tau: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one answer: 1 - min over GTs of NL, zeroed below tau.

    NL = Levenshtein(g', p') / max(len(g.upper()), len(p.upper())): g', p' lower-cased, stripped and
    whitespace-collapsed, the lengths those of the RAW strings (0 / 0 -> NL = 0). E.g. "abcd" vs "abxy": 2/4,
    score 0.5 (kept at tau = 0.5); "abcd" vs "axyz": 0; "  ab  cd  " vs "abcd": 1/10 -> 0.9.
    """
    p = normalize_simple(pred)
    nls = []
    for gt in _answers(gts, "anls"):
        longest = max(len(gt.upper()), len(pred.upper()))  # upper(): the reference's, "ß" counts 2
        nls.append(levenshtein(normalize_simple(gt), p) / longest if longest else 0.0)
    score = 1.0 - min(nls)
    return score if score >= tau else 0.0


# ------------------------------------------------------------------------- relaxed accuracy (ChartQA)


def _to_float(s: str) -> float | None:
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def relaxed_accuracy(pred: str, gt: str | Sequence[str], tol: float = 0.05) -> float:
    """ChartQA relaxed correctness, max over GTs: numbers within `tol` relative error, else exact (no case).

    E.g. pred "10.4" vs gt "10": |0.4| / 10 = 4 % -> 1.0; "10.6" -> 6 % -> 0.0; "45%" vs "0.45" -> 1.0.
    """
    p = pred.strip()
    pf = _to_float(p)
    for g in _answers(gt, "relaxed_accuracy"):
        g = g.strip()
        gf = _to_float(g)
        if pf is not None and gf:  # gf == 0 has no relative error: fall back to the string test
            if abs(pf - gf) / abs(gf) <= tol:
                return 1.0
        elif p.lower() == g.lower():
            return 1.0
    return 0.0


# ------------------------------------------------------------------------- boxes


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """COCO/RefCOCO [x, y, w, h] -> [x1, y1, x2, y2]."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (x2 >= x1, y2 >= y1), continuous coordinates."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# Qwen-VL's official grounding eval reads the first "(a),(b)" pair of the answer; the answer it reads is the text
# generated after the prompt's "<box>", decoded without special tokens.
_V1_PAIR = re.compile(r"\((.*?)\),\((.*?)\)")
_V1_SPECIAL = re.compile(r"</?(?:ref|box|quad|img)>|<imgpad>|<\|[^|<>]*\|>")
_V1_GRID = 999  # the eval divides by 999; the model card's drawing code divides by 1000 (architecture-facts A.7)


def qwen_vl_eval_box(answer: str, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    r"""The predicted box of a Qwen-VL (v1) grounding answer as eval_mm/evaluate_grounding.py decodes it.

    Text after the first "<box>" (all of it when there is none), special-token strings removed; the first
    match of `\((.*?)\),\((.*?)\)`, each group split on "," into exactly two floats; then x / 999 * w and
    y / 999 * h in float32. Anything unparsable gives (0, 0, 0, 0), which scores IoU 0. No clamping and no
    corner swap. E.g. "(100,200),(500,700)" on 640x480 -> (64.064, 96.096, 320.32, 336.336).
    image_size: (w, h) of the original image.
    """
    _, tag, after = answer.partition("<box>")
    m = _V1_PAIR.search(_V1_SPECIAL.sub("", after if tag else answer))
    try:
        if m is None or "," not in m.group(1) or "," not in m.group(2):
            raise ValueError
        x1, y1 = (float(v) for v in m.group(1).split(","))
        x2, y2 = (float(v) for v in m.group(2).split(","))
    except ValueError:
        return (0.0, 0.0, 0.0, 0.0)
    w, h = image_size
    with np.errstate(all="ignore"):  # "1e50" -> inf, as in the reference's float32 tensor
        scaled = np.array([x1, y1, x2, y2]).astype(np.float32) / np.float32(_V1_GRID)
        scaled *= np.array([w, h, w, h], dtype=np.float32)
    return tuple(float(v) for v in scaled)


def _iou_float32(a: Sequence[float], b: Sequence[float]) -> float:
    """`iou` in float32, in the order torchvision's box_area / the reference's box_iou compute it."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    with np.errstate(all="ignore"):  # inf boxes give nan, which is no hit
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        area_b = (b[2] - b[0]) * (b[3] - b[1])
        wh = np.maximum(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), np.float32(0))
        inter = wh[0] * wh[1]
        union = area_a + area_b - inter
        return float(inter / union) if union > 0 else 0.0


def grounding_hit(
    pred_text: str,
    gt_box: Sequence[float],
    family: str,
    image_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
    thr: float = 0.5,
) -> float:
    """1.0 if the FIRST box in `pred_text` has IoU >= thr with `gt_box`, else 0.0 (also when none parses).

    gt_box: [x1, y1, x2, y2] in original-image pixels (RefCOCO stores xywh: see `xywh_to_xyxy`).
    family "qwen_vl": `qwen_vl_eval_box` and a float32 IoU, as Qwen-VL's own RefCOCO eval. Other families: the
    codec `qwenvl.processing.grounding.parse_boxes` (input_size = (w, h) of the resized model input, required
    for qwen2_5_vl).
    """
    if family == QWEN_VL:
        return float(_iou_float32(qwen_vl_eval_box(pred_text, image_size), gt_box) >= thr)
    boxes = parse_boxes(pred_text, family, image_size, input_size)
    if not boxes:
        return 0.0
    b = boxes[0]
    return float(iou((b.x1, b.y1, b.x2, b.y2), gt_box) >= thr)


# ------------------------------------------------------------------------- multiple choice


def choose_by_likelihood(
    logprob_fn: Callable[[str, str], float], prompt: str, choices: Sequence[str], per_byte: bool = False
) -> int:
    """Index of the choice the model finds likeliest as a continuation of `prompt` (ties: the first).

    logprob_fn(prompt, continuation) returns the summed token log-probabilities of the continuation. With
    per_byte=True each sum is divided by the continuation's UTF-8 length (lm-eval's "acc_bytes"; its "acc_norm"
    divides by characters), which stops long options from losing just for having more tokens. Per-token
    normalisation (Qwen-VL's eval_mm) needs the token counts: `qwenvl.eval.likelihood.choose`.
    """
    if not choices:
        raise ValueError("choose_by_likelihood needs at least one choice")
    scores = []
    for choice in choices:
        lp = float(logprob_fn(prompt, choice))
        scores.append(lp / max(1, len(choice.encode("utf-8"))) if per_byte else lp)
    return max(range(len(scores)), key=lambda k: (scores[k], -k))


def mc_accuracy(predicted: Sequence[int], answers: Sequence[int]) -> float:
    """Fraction of questions whose predicted choice index equals the answer index."""
    if len(predicted) != len(answers):
        raise ValueError(f"{len(predicted)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("mc_accuracy needs at least one question")
    return sum(int(p) == int(a) for p, a in zip(predicted, answers, strict=True)) / len(answers)


# ------------------------------------------------------------------------- aggregation


def aggregate(records: Iterable[Mapping[str, Any]], score_key: str = "score") -> dict[str, dict[str, float]]:
    """Mean score per task and per task/lang.

    Each record has "task", a score under `score_key` (bool or number) and optionally "lang". Returns
    {"vqa": {"mean": 0.75, "n": 4}, "vqa/en": {...}, "vqa/zh": {...}, ...}, keys sorted; a record without "lang"
    counts only towards its task. Different tasks use different metrics, so no overall mean is given.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        score = float(r[score_key])
        groups[str(r["task"])].append(score)
        if r.get("lang") is not None:
            groups[f"{r['task']}/{r['lang']}"].append(score)
    return {k: {"mean": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}
