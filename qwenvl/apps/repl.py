"""Interactive chat: a read-answer loop over `Pipeline.chat(stream=True)` that keeps the conversation.

Commands: `/image PATH` attaches an image to the next user turn (repeatable), `/reset` clears the history,
`/quit` (or end of input) exits. A bad path or image prints one line and the loop goes on.
Must not: load models or parse argv (cli.py does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from qwenvl.processing.image import load_image

HELP = "commands: /image PATH (attach to the next turn), /reset (clear history), /quit"


def run_repl(pipe: Any, lines: Iterable[str], out: IO[str], err: IO[str], **chat_kw: Any) -> int:
    """Drive a multi-turn chat from `lines` (e.g. sys.stdin); answers stream to `out`. Returns 0."""
    history: list[dict] = []
    pending: list[str] = []
    print(HELP, file=err)
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history, pending = [], []
            print("(history cleared)", file=err)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                load_image(path)  # check now, so a bad path never reaches the model
            except (ValueError, FileNotFoundError, TypeError) as e:
                print(f"error: {e}", file=err)
                continue
            pending.append(path)
            print(f"(image attached: {path})", file=err)
            continue
        if line.startswith("/"):
            print(f"error: unknown command {line.split()[0]!r}; {HELP}", file=err)
            continue
        content = [{"type": "image", "image": p} for p in pending] + [{"type": "text", "text": line}]
        turn = [*history, {"role": "user", "content": content}]
        pieces: list[str] = []
        try:
            stream = pipe.chat(turn, stream=True, **chat_kw)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=err)
            continue
        try:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer (closing the stream cancels it), not the chat
            stream.close()
            print("\n(answer interrupted)", file=err)
        out.write("\n")
        out.flush()
        history = [*turn, {"role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}]}]
        pending = []
    return 0
