"""The VQA answer normaliser of the official VQA evaluation (VQA v2 / TextVQA / OK-VQA / VizWiz).

Written from the official script's definition as Qwen-VL ships it (eval_mm/vqa_eval.py, `processPunctuation`
then `processDigitArticle`; VLMEvalKit's `process_punctuation` / `_process_digit_article` are the same).
Steps, in order (reference: eval-metrics.md 4.1, "VQA accuracy"):

1. newlines and tabs become spaces; strip.
2. punctuation: each character of `PUNCTUATION` is deleted when it touches a space (`"p "` or `" p"` occurs in
   the input) or when the input holds a digit-comma-digit run such as "1,000" (comma strip); otherwise it
   becomes a space, so "black/white" -> "black white" but "yes, it is" -> "yes it is" and "1,000" -> "1000".
   Both tests look at the answer as it came in, not as it is being edited.
3. period strip: a "." not followed by a digit is deleted, so "dogs." -> "dogs" and "5." -> "5" but "3.5" stays.
   The reference regex reads as if it also meant to keep a "." preceded by a digit, but its look-behind is
   written as a look-ahead that can never match, so what it does -- and what we do -- is the rule above. It
   also passes `re.UNICODE` where `re.sub` takes its `count`, so at most 32 periods go; we keep that limit.
4. lower-case, split on whitespace, map number words `NUMBER_WORDS` to digits, drop articles a/an/the, then
   rewrite whole words found in `CONTRACTIONS` ("dont" -> "don't"); join with single spaces.

Apostrophes, colons and characters not listed are kept. `CONTRACTIONS` is the reference's table as data, quirks
included: its keys "Im", "Ive", "Id've", "I'dve" are capitalised and so never match the lower-cased words;
"somebody'd" maps to "somebodyd"; "shes", "lets", "ive" and the double-drop spellings ("couldntve") are absent.

Must not: import the model or any tokenizer.
"""

from __future__ import annotations

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

# Step 4's table, "spelling>rewrite" pairs, in the reference's order.
_CONTRACTION_PAIRS = """
aint>ain't arent>aren't cant>can't couldve>could've couldnt>couldn't couldn'tve>couldn't've couldnt've>couldn't've
didnt>didn't doesnt>doesn't dont>don't hadnt>hadn't hadnt've>hadn't've hadn'tve>hadn't've hasnt>hasn't
havent>haven't hed>he'd hed've>he'd've he'dve>he'd've hes>he's howd>how'd howll>how'll hows>how's
Id've>I'd've I'dve>I'd've Im>I'm Ive>I've isnt>isn't itd>it'd itd've>it'd've it'dve>it'd've itll>it'll
let's>let's maam>ma'am mightnt>mightn't mightnt've>mightn't've mightn'tve>mightn't've mightve>might've
mustnt>mustn't mustve>must've neednt>needn't notve>not've oclock>o'clock oughtnt>oughtn't ow's'at>'ow's'at
'ows'at>'ow's'at 'ow'sat>'ow's'at shant>shan't shed've>she'd've she'dve>she'd've she's>she's shouldve>should've
shouldnt>shouldn't shouldnt've>shouldn't've shouldn'tve>shouldn't've somebody'd>somebodyd
somebodyd've>somebody'd've somebody'dve>somebody'd've somebodyll>somebody'll somebodys>somebody's
someoned>someone'd someoned've>someone'd've someone'dve>someone'd've someonell>someone'll someones>someone's
somethingd>something'd somethingd've>something'd've something'dve>something'd've somethingll>something'll
thats>that's thered>there'd thered've>there'd've there'dve>there'd've therere>there're theres>there's
theyd>they'd theyd've>they'd've they'dve>they'd've theyll>they'll theyre>they're theyve>they've twas>'twas
wasnt>wasn't wed've>we'd've we'dve>we'd've weve>we've werent>weren't whatll>what'll whatre>what're
whats>what's whatve>what've whens>when's whered>where'd wheres>where's whereve>where've whod>who'd
whod've>who'd've who'dve>who'd've wholl>who'll whos>who's whove>who've whyll>why'll whyre>why're whys>why's
wont>won't wouldve>would've wouldnt>wouldn't wouldnt've>wouldn't've wouldn'tve>wouldn't've yall>y'all
yall'll>y'all'll y'allll>y'all'll yall'd've>y'all'd've y'alld've>y'all'd've y'all'dve>y'all'd've youd>you'd
youd've>you'd've you'dve>you'd've youll>you'll youre>you're youve>you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split(">") for pair in _CONTRACTION_PAIRS.split())

_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_PERIOD_STRIP_LIMIT = 32  # the reference's re.UNICODE (== 32) lands in re.sub's `count`


def process_punctuation(text: str) -> str:
    """Steps 2 and 3 (see the module docstring): 'black/white' -> 'black white', '1,000.' -> '1000'."""
    comma_number = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if touches_space or comma_number else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_STRIP_LIMIT)


def process_digit_article(text: str) -> str:
    """Step 4 (see the module docstring): 'The Two dogs' -> '2 dogs', 'dont' -> "don't"."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(s: str) -> str:
    """The VQA-normalised form of an answer (steps 1-4): 'Two dogs.' -> '2 dogs', 'the cat' -> 'cat'."""
    s = s.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(s))
