"""TextStream: text deltas that never change afterwards, incomplete UTF-8 held back, stop strings
found across token boundaries and never leaked into a delta."""

from __future__ import annotations

from qwenvl.engine.stops import TextStream
from tests.engine.fake import decode


def run(tokens: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    ts, ids, deltas = TextStream(decode, stop), [], []
    for t in tokens:
        ids.append(t)
        deltas.append(ts.push(ids))
        if ts.stopped_by:
            break
    else:
        deltas.append(ts.finish())
    return deltas, ts


def test_multibyte_character_waits_for_its_last_byte():
    deltas, ts = run(list("aé€b".encode()))
    assert deltas[:4] == ["a", "", "é", ""] and "".join(deltas) == ts.text == "aé€b"


def test_stop_string_across_tokens_is_cut_and_never_emitted():
    deltas, ts = run(list(b"say Observation: x"), stop=("Observation:",))
    assert ts.stopped_by == "Observation:" and ts.text == "say "
    assert "".join(deltas) == "say " and all("O" not in d for d in deltas)


def test_earliest_of_several_stops_wins_and_held_text_is_released_at_the_end():
    deltas, ts = run(list(b"abcdef"), stop=("cd", "bcx"))
    assert ts.text == "ab" and ts.stopped_by == "cd"
    deltas, ts = run(list(b"abcdef"), stop=("xyz",))
    assert deltas[-1] == "ef" and "".join(deltas) == "abcdef" and ts.stopped_by is None


def test_one_character_stop_completed_by_a_later_byte():
    deltas, ts = run(list("xé!".encode()), stop=("é",))
    assert ts.text == "x" and "".join(deltas) == "x"
