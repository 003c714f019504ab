"""CIDEr-D against small corpora computed by hand from the definition, and against pycocoevalcap's Cider."""

from __future__ import annotations

import math
import random

import pytest

from qwenvl.eval.cider import cider, tokenize_caption


def test_tokenize_caption() -> None:
    assert tokenize_caption("A dog's ball, on the-grass.") == ["a", "dog", "s", "ball", "on", "the", "grass"]


def test_tokenize_caption_cjk_characters() -> None:
    # Chinese: one token per character, punctuation (，。、) dropped; not one token per caption.
    assert tokenize_caption("一只猫，在沙发上。") == ["一", "只", "猫", "在", "沙", "发", "上"]
    # Mixed: CJK characters one by one, Latin words and digits by whitespace / punctuation.
    assert tokenize_caption("一只Cat在sofa上, sleeping 3次.") == ["一", "只", "cat", "在", "sofa", "上", "sleeping",
                                                                 "3", "次"]
    assert tokenize_caption("ねこ、カメラ") == ["ね", "こ", "カ", "メ", "ラ"]  # kana too
    assert tokenize_caption("고양이 한 마리") == ["고양이", "한", "마리"]  # Hangul is written with spaces
    assert tokenize_caption("𠀀字") == ["𠀀", "字"]  # CJK extension B (outside the BMP)


def test_chinese_two_image_corpus_by_hand() -> None:
    # Tokens 一 只 猫 / 一 只 狗, N = 2. df = 2 (idf 0): 一, 只, 一只. df = 1 (idf L = log 2): 猫, 只猫, 一只猫 (and
    # the dog's). Each order n = 1, 2, 3 is a cosine of 1 -> 10; no 4-grams -> 0. CIDEr-D = 30 / 4 = 7.5.
    # (Split on whitespace, each caption would be a single token: 10 / 4 = 2.5.)
    _, per_id = cider({"A": "一只猫", "B": "一只狗"}, {"A": ["一只猫"], "B": ["一只狗"]})
    assert per_id == {"A": pytest.approx(7.5), "B": pytest.approx(7.5)}
    # A partly right zh caption now scores above 0: "两只猫" shares 只, 猫, 只猫 with "一只猫".
    _, per_id = cider({"A": "两只猫", "B": "一只狗"}, {"A": ["一只猫"], "B": ["一只狗"]})
    assert 0.0 < per_id["A"] < 7.5


def test_identical_two_image_corpus_by_hand() -> None:
    # N = 2 images. df: "a" 2 -> idf log(2/2) = 0; "cat", "dog", "a cat", "a dog" 1 -> idf log 2.
    # n=1: g(c) = g(ref) = {a: 0, cat: log 2}: cosine 1, no length penalty -> x10 = 10. n=2: same, 10.
    # n=3, n=4: two-word captions have no 3- or 4-grams -> 0. CIDEr-D = (10 + 10 + 0 + 0) / 4 = 5.
    score, per_id = cider({"A": "a cat", "B": "a dog"}, {"A": ["a cat"], "B": ["a dog"]})
    assert per_id == {"A": pytest.approx(5.0), "B": pytest.approx(5.0)}
    assert score == pytest.approx(5.0)


def test_unigram_clipping_and_length_penalty_by_hand() -> None:
    # Image A: candidate "a cat cat", reference "a cat". idf as above (a: 0, cat: log 2 = L).
    # g(c) = {a: 0, cat: 2L}, ||g(c)|| = 2L; g(r) = {a: 0, cat: L}, ||g(r)|| = L.
    # clipped dot = min(2L, L) * L = L^2 -> cosine L^2 / (2L * L) = 1/2.
    # length penalty: words 3 vs 2 -> exp(-1 / (2 * 6^2)) = exp(-1/72).  A = 10 * 0.5 * exp(-1/72) = 4.9310...
    # Image B identical -> 10.  Corpus = (A + 10) / 2.
    score, per_id = cider({"A": "a cat cat", "B": "a dog"}, {"A": ["a cat"], "B": ["a dog"]}, n=1)
    a = 10 * 0.5 * math.exp(-1 / 72)
    assert per_id["A"] == pytest.approx(a)
    assert per_id["B"] == pytest.approx(10.0)
    assert score == pytest.approx((a + 10) / 2)


def test_multiple_references_are_averaged() -> None:
    # Image A references "a cat" and "a dog"; B references "a bird". N = 2.
    # df: a 2 (idf 0), cat 1, dog 1, bird 1 (idf L). Candidate "a cat", n = 1:
    # vs "a cat": cosine 1; vs "a dog": no shared weighted unigram -> 0. Mean over 2 refs = 0.5 -> x10 = 5.
    _, per_id = cider({"A": "a cat", "B": "a bird"}, {"A": ["a cat", "a dog"], "B": ["a bird"]}, n=1)
    assert per_id["A"] == pytest.approx(5.0)


def test_identical_beats_partial_beats_disjoint() -> None:
    refs = {
        "1": ["a man riding a red bicycle down the street", "a person rides a bike on a road"],
        "2": ["two dogs playing in the snow", "a pair of dogs run through snow"],
        "3": ["a plate of food with broccoli and rice", "rice and vegetables on a white plate"],
    }
    others = {"2": "two dogs playing in the snow", "3": "a plate of food with broccoli and rice"}
    exact = cider({"1": refs["1"][0], **others}, refs)[1]["1"]
    partial = cider({"1": "a man riding a bicycle", **others}, refs)[1]["1"]
    disjoint = cider({"1": "green elephants sleep quietly", **others}, refs)[1]["1"]
    assert exact > partial > disjoint
    assert disjoint == 0.0
    assert cider({"1": "", **others}, refs)[1]["1"] == 0.0


def test_single_image_corpus_is_zero() -> None:
    # Every reference n-gram has df = N = 1, idf = log 1 = 0.
    assert cider({"A": "a cat"}, {"A": ["a cat"]})[0] == 0.0


def test_corpus_is_the_prediction_ids() -> None:
    refs = {"A": ["a cat"], "B": ["a dog"], "C": ["a cat"]}
    # Only A and B are evaluated, so C does not raise df("cat") to 2.
    assert cider({"A": "a cat", "B": "a dog"}, refs)[0] == pytest.approx(5.0)
    with pytest.raises(KeyError):
        cider({"Z": "a cat"}, refs)
    with pytest.raises(ValueError):
        cider({}, refs)


# ------------------------------------------------------------------------- pycocoevalcap's Cider (test-only reference)

_WORDS = ("a man woman dog cat two red blue small large riding sitting on in the of with near street table "
          "grass bicycle plate food playing standing next to white black ball water boat tree").split()


def _random_caption(rng: random.Random, base: list[str] | None = None) -> str:
    words = list(base) if base else [rng.choice(_WORDS) for _ in range(rng.randint(1, 12))]
    for _ in range(rng.randint(0, 3)):  # edit a copy of the base: substitute, drop or insert a word
        op, k = rng.randrange(3), rng.randrange(len(words) + 1)
        if op == 0 and k < len(words):
            words[k] = rng.choice(_WORDS)
        elif op == 1 and k < len(words) and len(words) > 1:
            del words[k]
        else:
            words.insert(k, rng.choice(_WORDS))
    text = " ".join(words)
    return text.capitalize() + rng.choice(("", ".", " .", "!")) if rng.random() < 0.5 else text


def _pycoco_cider(preds: dict, refs: dict, tokens) -> tuple[float, list[float]]:
    from pycocoevalcap.cider.cider import Cider

    res = {i: [" ".join(tokens(preds[i]))] for i in preds}
    gts = {i: [" ".join(tokens(r)) for r in refs[i]] for i in preds}
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(v) for v in scores]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocoevalcap_on_random_english_captions(seed: int) -> None:
    pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(seed)
    refs, preds = {}, {}
    for i in range(36):
        base = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        refs[f"img{i}"] = [_random_caption(rng, base) for _ in range(rng.randint(1, 5))]
        # candidates: an edited reference, a fresh random caption, or (rarely) an exact copy / an empty string
        kind = rng.random()
        preds[f"img{i}"] = (refs[f"img{i}"][0] if kind < 0.1 else "" if kind < 0.15
                            else _random_caption(rng) if kind < 0.4 else _random_caption(rng, base))
    ours, per_id = cider(preds, refs)
    ref_score, ref_scores = _pycoco_cider(preds, refs, tokenize_caption)
    assert [per_id[i] for i in preds] == pytest.approx(ref_scores, rel=1e-12, abs=1e-12)
    assert ours == pytest.approx(ref_score, rel=1e-12)
    assert ours > 0.0


def test_equals_pycocoevalcap_on_chinese_characters() -> None:
    pytest.importorskip("pycocoevalcap.cider.cider")
    refs = {
        "1": ["一只猫坐在红色的沙发上", "沙发上有一只猫"],
        "2": ["两只狗在雪地里玩耍", "雪地上有两只小狗在跑"],
        "3": ["一盘米饭和西兰花", "白色的盘子里有米饭和蔬菜"],
        "4": ["一个男人骑着自行车", "街上有人骑车"],
    }
    preds = {"1": "一只猫在沙发上睡觉", "2": "两只狗在玩", "3": "一盘食物", "4": "一个man在骑bike"}
    ours, per_id = cider(preds, refs)
    ref_score, ref_scores = _pycoco_cider(preds, refs, tokenize_caption)
    assert [per_id[i] for i in preds] == pytest.approx(ref_scores, rel=1e-12, abs=1e-12)
    assert ours == pytest.approx(ref_score, rel=1e-12)
    assert all(v > 0 for v in ref_scores)
