"""VQA answer normaliser: punctuation / period / comma rules, number words, articles, contractions."""

from __future__ import annotations

import pytest

from qwenvl.eval.vqa_norm import CONTRACTIONS, normalize_vqa_answer, process_digit_article, process_punctuation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # trailing "." not before a digit is deleted; "two" -> "2"; lower-case
        ("2 dogs", "2 dogs"),
        ("the cat", "cat"),  # articles dropped
        ("A cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions get their apostrophe back
        ("Dont", "don't"),
        ("I dont know", "i don't know"),
        ("couldnt've", "couldn't've"),
        ("couldn'tve", "couldn't've"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten (and none) are number words
        ("3.5", "3.5"),  # "." before a digit stays
        ("5.", "5"),
        ("1,000", "1000"),  # digit,digit present: every listed punctuation mark is deleted
        ("1,000 (approx)", "1000 approx"),
        ("black/white", "black white"),  # "/" touches no space: becomes a space
        ("yes, it is", "yes it is"),  # ", " touches a space: deleted
        ("red,blue", "red blue"),
        ("what?!", "what"),  # "?" and "!" become spaces, then whitespace is collapsed
        ("  hello\tworld\n", "hello world"),
        ("it's", "it's"),  # apostrophes are not in the punctuation list
        ("its", "its"),  # not in the table, not mapped to "it's"
        ("well", "well"),
        ("10:30", "10:30"),  # ":" is kept
        # The reference table's quirks, kept: capitalised keys ("Im") never match the lower-cased words, "shes" and
        # the doubly dropped "couldntve" are absent, "somebody'd" is rewritten without its apostrophe.
        ("Im", "im"),
        ("shes", "shes"),
        ("couldntve", "couldntve"),
        ("somebody'd", "somebodyd"),
        ("hed", "he'd"),
        ("1.5. 2.", "1.5 2"),  # only "." before a digit survives
        ("x" + "." * 40, "x" + "." * 8),  # the reference deletes at most 32 periods (re.UNICODE == 32 as count)
        ("1,000 (approx.)", "1000 approx"),
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


def test_two_dogs_and_2_dogs_normalise_alike() -> None:
    assert normalize_vqa_answer("Two dogs.") == normalize_vqa_answer("2 dogs")


def test_contraction_table_is_the_reference_table() -> None:
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["dont"] == "don't"
    assert CONTRACTIONS["cant"] == "can't"
    assert CONTRACTIONS["yall"] == "y'all"
    assert CONTRACTIONS["'ows'at"] == "'ow's'at"
    assert CONTRACTIONS["let's"] == "let's"  # identity entries exist
    for word in ("its", "well", "were", "ill", "hell", "shell", "id", "im", "ive", "lets", "shes"):
        assert word not in CONTRACTIONS


def test_steps_are_the_reference_functions() -> None:
    # processPunctuation keeps case and spacing; processDigitArticle lower-cases, maps and joins.
    assert process_punctuation("(Red)") == " Red "
    assert process_punctuation("yes, it is.") == "yes it is"
    assert process_digit_article(" The  Two dogs ") == "2 dogs"
