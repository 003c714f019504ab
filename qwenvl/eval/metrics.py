"""Evaluation metrics: VQA accuracy, exact match, ANLS, relaxed accuracy, IoU / grounding hits, CIDEr-D,
multiple choice by likelihood, and per-task aggregation. Written from the definitions in
shared/reference/eval-metrics.md (4.1); every function scores ONE example and returns a float in [0, 1]
(CIDEr: a corpus, x10 scale), so a run's score is the mean that `aggregate` takes.

Definitional choices (where the reference implementations disagree or the definition leaves a gap):

* VQA accuracy normalises the prediction and every GT answer with `normalize_vqa_answer` (the original VQA
  script skips this when all GT answers agree, relying on pre-normalised GT; lmms-eval always normalises).
  With >= 10 GT answers: the leave-one-out consensus. With fewer (our synthetic data has 1): 1.0 if the
  normalised prediction equals any normalised answer, else 0.0 -- the leave-one-out rule would give 0 for a
  single answer and cap 2..9 answers below 1.
* ANLS follows the DocVQA definition (Biten et al. 2019): both strings lower-cased, stripped and
  whitespace-collapsed; NL = Levenshtein / max(len) of those SAME normalised strings (one implementation takes
  the lengths of the raw strings, which can only lower NL); score = max over GTs of 1 - NL, kept when
  1 - NL >= tau and 0 otherwise. At exactly NL = tau the score is 1 - tau (as every evaluator in the reference
  table computes it; the paper's "NL < tau" would give 0 there).
* Relaxed accuracy (ChartQA): both strings stripped; if both parse as finite floats ("%" suffix -> /100) and the
  GT is non-zero: |pred - gt| / |gt| <= 5 %; otherwise case-insensitive exact match. No thousands separators.
* IoU uses continuous [x1, y1, x2, y2] coordinates (area = w * h, no "+1"); zero-area union gives 0.
* Grounding parses only the FIRST box of the output with the version-aware codec (original-image pixels), so no
  scale heuristic ever guesses between per-mille and pixels; a hit is IoU >= thr.

Must not: import the model, tokenizers or heavy packages; the runner builds log-prob functions on the model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from qwenvl.eval.cider import cider, tokenize_caption
from qwenvl.eval.vqa_norm import normalize_vqa_answer
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


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction.

    With n >= 10 answers: mean over i of min(1, #{j != i : a_j == pred} / 3) (all strings normalised), so
    1, 2, 3, >= 4 matching humans out of 10 give 0.3, 0.6, 0.9, 1.0. With fewer: normalised exact match
    against any answer (see the module docstring).
    """
    answers = _answers(answers, "vqa_accuracy")
    p = normalize_vqa_answer(pred)
    norm = [normalize_vqa_answer(a) for a in answers]
    if len(norm) < VQA_CONSENSUS_ANSWERS:
        return float(p in norm)
    matches = [a == p for a in norm]
    total = sum(matches)
    # Leaving out answer i removes one match exactly when answer i itself matches.
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(norm)


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
    """Average Normalised Levenshtein Similarity of one answer: max over GTs of 1 - NL, zeroed below tau.

    NL = Levenshtein(g, p) / max(len(g), len(p)) with g, p lower-cased and whitespace-collapsed (two empty
    strings: NL = 0). E.g. "abcd" vs "abxy": NL = 2/4, score 0.5 (kept at tau = 0.5); "abcd" vs "axyz": 0.
    """
    p = normalize_simple(pred)
    best = 0.0
    for gt in _answers(gts, "anls"):
        g = normalize_simple(gt)
        longest = max(len(g), len(p))
        nl = levenshtein(g, p) / longest if longest else 0.0
        best = max(best, 1.0 - nl)
    return best if best >= tau else 0.0


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
    family/image_size/input_size as in `qwenvl.processing.grounding.parse_boxes` (input_size = (w, h) of the
    resized model input, required for qwen2_5_vl).
    """
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
    per_byte=True each sum is divided by the continuation's UTF-8 length (lm-eval's "acc_norm"), which stops
    long options from losing just for having more tokens.
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
