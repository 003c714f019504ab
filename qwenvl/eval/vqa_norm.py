"""The VQA answer normaliser (VQA v2 / TextVQA / OK-VQA / VizWiz evaluation), written from its definition.

Steps, in order (reference: eval-metrics.md 4.1, "VQA accuracy"):

1. newlines and tabs become spaces; strip.
2. punctuation: each character of `PUNCTUATION` is deleted when it touches a space (`"p "` or `" p"` occurs in
   the input) or when the input holds a digit-comma-digit run such as "1,000" (comma strip); otherwise it
   becomes a space, so "black/white" -> "black white" but "yes, it is" -> "yes it is" and "1,000" -> "1000".
   Both tests look at the answer as it came in, not as it is being edited.
3. period strip: a "." not followed by a digit is deleted, so "dogs." -> "dogs" and "5." -> "5" but "3.5" stays.
   (The reference regex reads as if it also meant to keep a "." preceded by a digit, but its look-behind is
   written as a look-ahead, so what it does -- and what we do -- is the rule above.)
4. lower-case, split on whitespace, map number words `NUMBER_WORDS` to digits, drop articles a/an/the, then
   restore apostrophes in contractions via `CONTRACTIONS` ("dont" -> "don't"); join with single spaces.

Apostrophes, colons, periods inside numbers and other characters not listed are kept.

Must not: import the model or any tokenizer.
"""

from __future__ import annotations

import itertools
import re

# Step 2: the characters handled by the punctuation rule (not "'", not ".", not ":").
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
ARTICLES = frozenset({"a", "an", "the"})
# Step 4: only these words become digits ("eleven" stays a word, as in the reference).
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

# Canonical contractions, lower case. CONTRACTIONS maps every spelling that drops one or more of their
# apostrophes ("couldnt've", "couldn'tve", "couldntve") to the canonical form.
_CANONICAL = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've "
    "shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll "
    "someone's something'd something'd've something'll something's that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
).split()
# Apostrophe-less spellings that are ordinary English words (or an identifier, "id") and must stay as written:
# "its" is the possessive, "well"/"were"/"ill"/"shed"/"whore" are words. The canonical list above already omits
# he'll, she'll, we'll, we're, we'd, she'd, I'll and I'd for the same reason.
_REAL_WORDS = frozenset({"its", "lets", "id", "ill", "well", "were", "wed", "hell", "shell", "shed", "whore"})


def _drop_apostrophe_variants(word: str) -> list[str]:
    """Every spelling of `word` with a non-empty subset of its apostrophes removed."""
    parts = word.split("'")
    variants = []
    for keep in itertools.product((True, False), repeat=len(parts) - 1):
        if all(keep):
            continue
        out = parts[0]
        for part, k in zip(parts[1:], keep, strict=True):
            out += ("'" if k else "") + part
        variants.append(out)
    return variants


def _build_contractions() -> dict[str, str]:
    table: dict[str, str] = {}
    for canonical in _CANONICAL:
        for variant in _drop_apostrophe_variants(canonical):
            if variant in _REAL_WORDS:
                continue
            if table.get(variant, canonical) != canonical:  # a spelling must not be claimed by two words
                raise AssertionError(f"contraction spelling {variant!r} is ambiguous")
            table[variant] = canonical
    return table


CONTRACTIONS = _build_contractions()

_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _punctuation(text: str) -> str:
    """Steps 2 and 3 (see the module docstring)."""
    comma_number = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if touches_space or comma_number else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _digits_articles_contractions(text: str) -> str:
    """Step 4 (see the module docstring)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(s: str) -> str:
    """The VQA-normalised form of an answer: 'Two dogs.' -> '2 dogs', 'the cat' -> 'cat', 'dont' -> "don't"."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_punctuation(s))
