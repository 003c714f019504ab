"""Per-example metrics, checked against values worked out by hand from the definitions."""

from __future__ import annotations

import math

import pytest

from qwenvl.eval.metrics import (
    aggregate,
    anls,
    choose_by_likelihood,
    exact_match,
    iou,
    levenshtein,
    mc_accuracy,
    relaxed_accuracy,
    vqa_accuracy,
    xywh_to_xyxy,
)

# ------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # m of 10 humans match. A matching answer i leaves m-1 matches among the other 9, a non-matching one m.
        (0, 0.0),
        (1, 0.3),  # (1 * min(1, 0/3) + 9 * min(1, 1/3)) / 10 = 3/10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10 = 9/10
        (4, 1.0),  # (4 * 1 + 6 * 1) / 10
        (10, 1.0),
    ],
)
def test_vqa_accuracy_ten_answers(matching: int, expected: float) -> None:
    answers = ["2 dogs"] * matching + ["cat"] * (10 - matching)
    assert vqa_accuracy("Two dogs.", answers) == pytest.approx(expected)


# Worked values of the official VQA script (Qwen-VL eval_mm/vqa_eval.py, VQAEval.evaluate) run on these answers:
# the prediction is fully normalised; GT answers get only the punctuation step, and only when they differ.
@pytest.mark.parametrize(
    ("pred", "answers", "official", "full"),
    [
        # GT "two" is not mapped to "2" (digits/articles are not applied to GT), the prediction is: no match.
        ("two", ["two"] * 3 + ["cat"] * 7, 0.0, 0.9),
        # GT answers differ -> punctuation step -> "dog." loses its period: 3 matches -> 0.9.
        ("dog", ["dog."] * 3 + ["cat"] * 7, 0.9, 0.9),
        # All 10 GT answers the same string -> not processed at all: "dog" != "dog." -> 0.
        ("dog", ["dog."] * 10, 0.0, 1.0),
        # The article stays in the GT ("The cat"), the prediction "cat" matches nothing.
        ("cat", ["The cat"] * 3 + ["dog"] * 7, 0.0, 0.9),
        # Punctuation that touches no space becomes a space in the GT (" red "), which no prediction equals.
        ("red", ["(red)"] * 4 + ["blue"] * 6, 0.0, 1.0),
        # digit,digit anywhere in the answer -> the comma is deleted on both sides: all 10 match.
        ("1,000", ["1,000"] * 2 + ["1000"] * 8, 1.0, 1.0),
        ("Yes.", ["yes"] * 10, 1.0, 1.0),
        ("I dont know", ["i don't know"] * 10, 1.0, 1.0),
        ("Two dogs.", ["2 dogs"] * 3 + ["cat"] * 7, 0.9, 0.9),
    ],
)
def test_vqa_accuracy_gt_treated_as_the_official_script(pred: str, answers: list[str], official: float,
                                                         full: float) -> None:
    assert vqa_accuracy(pred, answers) == pytest.approx(official)
    assert vqa_accuracy(pred, answers, gt_norm="official") == pytest.approx(official)
    # gt_norm="full": every GT answer fully normalised, as VLMEvalKit's process_line does.
    assert vqa_accuracy(pred, answers, gt_norm="full") == pytest.approx(full)


def test_vqa_accuracy_leaves_answers_out_by_position() -> None:
    # Equal strings are still different humans: 2 of 10 say "cat" -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6 (leaving out
    # every equal string would give (2 * 0 + 8 * 2/3) / 10 = 0.533).
    assert vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"] * 6) == 1.0
    with pytest.raises(ValueError, match="gt_norm"):
        vqa_accuracy("cat", ["cat"] * 10, gt_norm="vlmeval")


def test_vqa_accuracy_few_answers_is_normalised_exact_match() -> None:
    assert vqa_accuracy("Two dogs.", ["2 dogs"]) == 1.0
    assert vqa_accuracy("the cat", ["cat"]) == 1.0
    assert vqa_accuracy("cats", ["cat"]) == 0.0
    assert vqa_accuracy("dog", ["cat", "dog"]) == 1.0  # any of fewer than 10 answers
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


# ------------------------------------------------------------------------- exact match


def test_exact_match_normalisers() -> None:
    assert exact_match("  The  Cat ", "the cat") == 1.0  # default "simple"
    assert exact_match("The Cat", "the cat", normalize="none") == 0.0
    assert exact_match("Two dogs.", "2 dogs", normalize="vqa") == 1.0
    assert exact_match("Two dogs.", "2 dogs") == 0.0
    assert exact_match("b", ["a", "B"]) == 1.0
    assert exact_match("x", "X", normalize=str.upper) == 1.0


# ------------------------------------------------------------------------- ANLS


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0


def test_anls_values() -> None:
    assert anls("Hello  World", "hello world") == 1.0  # case and whitespace runs do not count
    # "abcde" vs "abcdx": 1 substitution / 5 -> 1 - 0.2 = 0.8
    assert anls("abcdx", "abcde") == pytest.approx(0.8)
    # max over GTs: "abcdx" is 0.8 from "abcde", 0 from "zzzzz"
    assert anls("abcdx", ["zzzzz", "abcde"]) == pytest.approx(0.8)
    # 1 insertion: NL = 1 / max(4, 5) -> 0.8
    assert anls("abcde", "abcd") == pytest.approx(0.8)
    assert anls("", "") == 1.0
    assert anls("", "abc") == 0.0


def test_anls_threshold_boundary() -> None:
    # "abcd" vs "abxy": 2 substitutions / 4 -> NL = 0.5, 1 - NL = 0.5: kept (the reference zeroes only 1 - NL < tau)
    assert anls("abxy", "abcd") == 0.5
    # "abcd" vs "axyz": NL = 3/4 -> 0.25 < 0.5: zeroed
    assert anls("axyz", "abcd") == 0.0
    # longer strings, same boundary: "abcdef" vs "abcxyz", NL = 3/6 = 0.5 -> 0.5; vs "abwxyz", NL = 4/6 -> 0
    assert anls("abcxyz", "abcdef") == 0.5
    assert anls("abwxyz", "abcdef") == 0.0
    # other thresholds: 1 - 3/4 = 0.25 is kept when tau <= 0.25
    assert anls("axyz", "abcd", tau=0.25) == 0.25
    assert anls("axyz", "abcd", tau=0.0) == pytest.approx(0.25)


# Worked values of Qwen-VL's eval_mm/infographicsvqa_eval.py (evaluate_method) on these answers. The distance is
# between normalised strings, the length max(len(gt.upper()), len(pred.upper())) of the raw ones; the comments
# give what lengths of the normalised strings would have scored instead.
@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ("  ab  cd  ", "abcd", 0.9),  # "ab cd" vs "abcd": 1 edit / 10 raw chars (/ 5 would give 0.8)
        ("a       ", "abcd", 0.625),  # "a" vs "abcd": 3 edits / 8 -> kept (3 / 4 -> 0.25 would be zeroed)
        ("abc", "  abcd  ", 0.875),  # 1 edit / 8 (/ 4 would give 0.75)
        ("s", "ß", 0.5),  # 1 edit; "ß".upper() == "SS" counts 2 -> NL 1/2, kept at tau (/ 1 would give 0)
        ("  ", "", 1.0),  # both normalise to "": distance 0
    ],
)
def test_anls_length_uses_raw_strings(pred: str, gt: str, expected: float) -> None:
    assert anls(pred, gt) == pytest.approx(expected)


# ------------------------------------------------------------------------- relaxed accuracy


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        ("10.4", "10", 1.0),  # |0.4| / 10 = 4 %
        ("10.5", "10", 1.0),  # exactly 5 % is allowed
        ("10.6", "10", 0.0),  # 6 %
        ("9.5", "10", 1.0),
        ("-10.4", "-10", 1.0),  # relative to |gt|
        ("45%", "0.45", 1.0),  # "%" -> /100
        ("45%", "45", 0.0),  # 0.45 vs 45
        ("0", "0", 1.0),  # gt 0: string comparison
        ("0.0", "0", 0.0),
        ("Yes", "yes", 1.0),  # non-numeric: case-insensitive exact
        ("yes ", "yes", 1.0),
        ("no", "yes", 0.0),
        ("1,000", "1000", 0.0),  # no thousands separators
    ],
)
def test_relaxed_accuracy(pred: str, gt: str, expected: float) -> None:
    assert relaxed_accuracy(pred, gt) == expected


def test_relaxed_accuracy_list() -> None:
    assert relaxed_accuracy("20", ["10", "19.5"]) == 1.0


# ------------------------------------------------------------------------- IoU


def test_iou() -> None:
    box = [10, 20, 30, 60]
    assert iou(box, box) == 1.0
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0  # disjoint
    assert iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0  # touching edges: zero-area intersection
    # half of each box overlaps the other: inter 1 * 2 = 2, union 4 + 4 - 2 = 6 -> 1/3
    assert iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(1 / 3)
    # one box is half of the other: inter 2, union 4 -> 0.5
    assert iou([0, 0, 2, 2], [0, 0, 1, 2]) == 0.5
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union


def test_xywh_to_xyxy() -> None:
    assert xywh_to_xyxy([10, 20, 30, 40]) == [10, 20, 40, 60]


# ------------------------------------------------------------------------- multiple choice


def test_choose_by_likelihood_picks_the_max() -> None:
    table = {"red": -3.0, "green": -1.5, "blue": -2.0}
    calls = []

    def logprob(prompt: str, continuation: str) -> float:
        calls.append((prompt, continuation))
        return table[continuation]

    assert choose_by_likelihood(logprob, "Q: colour? A:", ["red", "green", "blue"]) == 1
    assert calls == [("Q: colour? A:", c) for c in ("red", "green", "blue")]
    assert choose_by_likelihood(lambda p, c: 0.0, "q", ["a", "b"]) == 0  # ties: first
    with pytest.raises(ValueError):
        choose_by_likelihood(logprob, "q", [])


def test_choose_by_likelihood_per_byte() -> None:
    # "a": -2 / 1 byte = -2; "bbbb": -4 / 4 bytes = -1. Summed: "a" wins; per byte: "bbbb" wins.
    table = {"a": -2.0, "bbbb": -4.0}
    assert choose_by_likelihood(lambda p, c: table[c], "q", ["a", "bbbb"]) == 0
    assert choose_by_likelihood(lambda p, c: table[c], "q", ["a", "bbbb"], per_byte=True) == 1


def test_mc_accuracy() -> None:
    assert mc_accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    with pytest.raises(ValueError):
        mc_accuracy([0], [0, 1])


# ------------------------------------------------------------------------- aggregate


def test_aggregate() -> None:
    records = [
        {"task": "vqa", "lang": "en", "score": 1.0},
        {"task": "vqa", "lang": "en", "score": 0.0},
        {"task": "vqa", "lang": "zh", "score": 1.0},
        {"task": "grounding", "score": True},
    ]
    out = aggregate(records)
    assert list(out) == ["grounding", "vqa", "vqa/en", "vqa/zh"]
    assert out["vqa"] == {"mean": pytest.approx(2 / 3), "n": 3}
    assert out["vqa/en"] == {"mean": 0.5, "n": 2}
    assert out["vqa/zh"] == {"mean": 1.0, "n": 1}
    assert out["grounding"] == {"mean": 1.0, "n": 1}
    assert aggregate([]) == {}
    assert math.isclose(aggregate([{"task": "t", "acc": 0.25}], score_key="acc")["t"]["mean"], 0.25)
