"""CIDEr-D against small corpora computed by hand from the definition."""

from __future__ import annotations

import math

import pytest

from qwenvl.eval.cider import cider, tokenize_caption


def test_tokenize_caption() -> None:
    assert tokenize_caption("A dog's ball, on the-grass.") == ["a", "dog", "s", "ball", "on", "the", "grass"]


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
