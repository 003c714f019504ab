"""CIDEr-D caption consensus score (Vedantam et al., CVPR 2015, sec. 4), equal to pycocoevalcap's `Cider`.

For each image i with candidate c and references S_i = {s_i1 .. s_im}, and each n-gram order n = 1..4:

    g_n(s)[w] = h_w(s) * log(N / max(1, df(w)))          # TF-IDF vector of sentence s over n-grams w
    CIDEr-D_n(c, S_i) = 10/m * sum_j  exp(-(l(c) - l(s_ij))^2 / (2 sigma^2))
                                      * sum_w min(g_n(c)[w], g_n(s_ij)[w]) * g_n(s_ij)[w]
                                      / (||g_n(c)|| * ||g_n(s_ij)||)
    CIDEr-D(c, S_i) = mean over n of CIDEr-D_n;  corpus score = mean over images.

* h_w(s) is the raw count of n-gram w in s; N is the number of images in the evaluated corpus and df(w) the
  number of those images whose reference set contains w. IDF therefore comes from the references of the
  evaluated corpus only. An n-gram no reference contains gets df = 1 (idf = log N), so invented n-grams still
  weigh on the candidate's norm.
* Clipping (min) stops a candidate from gaining by repeating an n-gram; sigma = 6. The length l(.) is
  pycocoevalcap's: the number of bigrams, max(0, tokens - 1) (differences equal the token-count ones except
  between 0 and 1 token, where every cosine is 0 anyway). A zero norm (no n-grams of that order) gives 0.
* Scale: like pycocoevalcap, scores are x10 (an exact copy of every reference scores 10 * fraction of orders
  present); papers report this x100 (e.g. "CIDEr 121.4" is 1.214 here).
* Given the same tokens (pycocoevalcap splits its input on whitespace), every per-image score equals
  pycocoevalcap's `Cider().compute_score` (tests/eval/test_cider.py checks this on random captions).
* Tokenisation (`tokenize_caption`): lower-case, every Unicode punctuation character becomes a space, then
  every CJK character (Han ideographs, kana, CJK compatibility ideographs) is a token of its own and the rest
  is split on whitespace: "一只猫在sofa上, sleeping." -> 一 只 猫 在 sofa 上 sleeping. Chinese and Japanese
  write no spaces between words, so whitespace splitting would make a whole caption one token; characters
  rather than a word segmenter keep this dependency-free and deterministic. Hangul, which is written with
  spaces, is split on whitespace. This is NOT the PTB tokeniser lmms-eval runs (which splits clitics,
  "dog's" -> "dog 's"), so numbers can differ from published ones by a little; VLMEvalKit feeds raw strings.
* CIDEr is a corpus statistic: with a single image every idf is log(1/1) = 0 and every score is 0.

Must not: import the model; depend on pycocoevalcap (a test-only reference) or any tokeniser package.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

NGram = tuple[str, ...]


# CJK characters that are tokens on their own: kana, CJK Unified Ideographs (+ extension A, B-F and later in the
# supplementary planes), compatibility ideographs. Punctuation in these blocks is category P* and goes first.
_CJK = re.compile(
    "([\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f])"
)


def tokenize_caption(s: str) -> list[str]:
    """Lower-case, punctuation (Unicode category P*) -> space, CJK characters one token each, whitespace split."""
    chars = (" " if unicodedata.category(ch).startswith("P") else ch for ch in s.lower())
    return _CJK.sub(r" \1 ", "".join(chars)).split()


def _ngram_counts(tokens: Sequence[str], max_n: int) -> list[Counter[NGram]]:
    """counts[k] = Counter of (k+1)-grams of tokens."""
    return [Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)) for n in range(1, max_n + 1)]


class _Sentence:
    """TF-IDF vectors g_n, their norms, and the length (bigram count) of one tokenised sentence."""

    def __init__(self, tokens: Sequence[str], max_n: int, idf: dict[NGram, float], log_n: float) -> None:
        self.length = max(0, len(tokens) - 1)  # pycocoevalcap's length: the bigram count
        self.vecs = [{g: tf * idf.get(g, log_n) for g, tf in counts.items()} for counts in _ngram_counts(tokens, max_n)]
        self.norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in self.vecs]


def _similarity(cand: _Sentence, ref: _Sentence, sigma: float) -> list[float]:
    """Per n: clipped, length-penalised cosine between candidate and one reference (before the x10)."""
    penalty = math.exp(-((cand.length - ref.length) ** 2) / (2 * sigma**2))
    out = []
    for vc, vr, nc, nr in zip(cand.vecs, ref.vecs, cand.norms, ref.norms, strict=True):
        if nc == 0 or nr == 0:
            out.append(0.0)
            continue
        dot = sum(min(w, vr[g]) * vr[g] for g, w in vc.items() if g in vr)
        out.append(penalty * dot / (nc * nr))
    return out


def cider(
    preds: Mapping[Hashable, str], refs: Mapping[Hashable, Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D (x10 scale) of candidate captions `preds[id]` against `refs[id]` (one or more captions each).

    The corpus is the ids of `preds`; references of other ids are ignored. Returns (mean over ids, per-id).
    `n` is the largest n-gram order (4 in CIDEr-D, the only order pycocoevalcap's scorer supports).
    """
    if not preds:
        raise ValueError("cider needs at least one prediction")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ids = list(preds)
    for i in ids:
        if i not in refs or not refs[i]:
            raise KeyError(f"no reference captions for id {i!r}")
    ref_tokens = {i: [tokenize_caption(r) for r in refs[i]] for i in ids}
    # Document frequency: in how many images' reference sets each n-gram occurs (at least once).
    df: Counter[NGram] = Counter()
    for i in ids:
        seen: set[NGram] = set()
        for tokens in ref_tokens[i]:
            for counts in _ngram_counts(tokens, n):
                seen.update(counts)
        df.update(seen)
    log_n = math.log(len(ids))
    idf = {g: log_n - math.log(d) for g, d in df.items()}  # unseen n-grams fall back to log_n (df = 1)

    per_id: dict[Hashable, float] = {}
    for i in ids:
        cand = _Sentence(tokenize_caption(preds[i]), n, idf, log_n)
        totals = [0.0] * n
        for tokens in ref_tokens[i]:
            sims = _similarity(cand, _Sentence(tokens, n, idf, log_n), sigma)
            totals = [t + s for t, s in zip(totals, sims, strict=True)]
        per_id[i] = 10.0 * sum(totals) / n / len(ref_tokens[i])
    return sum(per_id.values()) / len(per_id), per_id
