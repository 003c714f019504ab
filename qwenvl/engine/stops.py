"""Incremental text for one request: text deltas as tokens arrive, and stop strings.

The engine is given a `decode(ids) -> str` callable and nothing else of the tokenizer (no templates,
no special-token tables). Each push re-decodes the request's generated ids (simple and exact for
byte-level BPE, where a token can end inside a UTF-8 character) and emits only text that cannot
change any more:
  - trailing U+FFFD (an incomplete character) is held back until the next token completes it;
  - with stop strings, the last len(longest stop) - 1 characters are held back, since they may be
    the start of a stop string that the next token completes ("Obs" + "erv" + "ation:").
A stop string found anywhere in the text (also one spanning several tokens) ends the request; the
text ends just before it. The concatenation of all deltas equals `.text`. Must not know of models.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class TextStream:
    """Text of one request's generated tokens. push() after every token, finish() at the end."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()) -> None:
        self.decode = decode
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # the request's text so far (final once finished)
        self.sent = 0  # characters of self.text already emitted
        self.stopped_by: str | None = None

    def push(self, ids: list[int]) -> str:
        """ids: ALL generated ids so far. Returns the new text that is safe to emit now (maybe "").

        When a stop string appears, self.stopped_by is set and .text is cut before it.
        """
        prev_stable = len(self.text.rstrip(REPLACEMENT))
        full = self.decode(ids)
        if self.stop:
            # search from where a stop string could start that was not already visible last time
            start = max(0, prev_stable - self.hold)
            hits = [(i, s) for s in self.stop if (i := full.find(s, start)) >= 0]
            if hits:
                i, s = min(hits)
                self.text, self.stopped_by = full[:i], s
                return self.finish()
        self.text = full
        safe = min(len(full.rstrip(REPLACEMENT)), len(full) - self.hold)
        if safe <= self.sent:
            return ""
        delta = full[self.sent:safe]
        self.sent = safe
        return delta

    def finish(self) -> str:
        """The rest of the text, held back until now (the request has ended)."""
        delta = self.text[self.sent:]
        self.sent = len(self.text)
        return delta
