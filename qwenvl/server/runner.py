"""The engine on its own thread, fed from asyncio: submit, stream events, cancel.

The engine is not thread-safe, so one daemon thread owns it: it runs queued calls (submit / cancel)
between steps, steps while anything is running, and hands each request's new events to the event loop
of the HTTP request that waits for them (call_soon_threadsafe into an asyncio.Queue). Admission (429)
is the app's, before a request's body is read (app.State.enter); `active` counts what the engine holds.
Must not: know HTTP, JSON or chat templates.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from qwenvl.engine.engine import Engine, Handle
from qwenvl.engine.sampling import SamplingParams
from qwenvl.engine.scheduler import Event
from qwenvl.inputs import ModelInputs

log = logging.getLogger("qwenvl.server")


@dataclass
class _Sink:
    handle: Handle
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class Stream:
    """One submitted request seen from asyncio: iterate its events; close() cancels it if unfinished."""

    def __init__(self, runner: EngineRunner, handle: Handle, q: asyncio.Queue) -> None:
        self.runner, self.handle, self._q = runner, handle, q
        self.finished = False

    @property
    def id(self) -> int:
        return self.handle.id

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.finished:
            ev = await self._q.get()
            if isinstance(ev, BaseException):
                self.finished = True
                raise ev
            if ev.finished:
                self.finished = True
            yield ev

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self.runner.cancel(self.handle.id)


class EngineRunner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future | None]] = queue.SimpleQueue()
        self._sinks: dict[int, _Sink] = {}
        self._wake = threading.Event()
        self._stop = False
        self.active = 0  # submitted and not yet finished (read by the app for 429 and /health)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="qwenvl-engine", daemon=True)
        self._thread.start()

    # -- called from the event loop ---------------------------------------------------------------
    async def submit(self, inputs: ModelInputs, params: SamplingParams, constraint: Any = None) -> Stream:
        """Queue a request on the engine thread. Raises ValueError when the engine refuses the request
        (it can never fit)."""
        with self._lock:
            self.active += 1
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def do() -> Handle:
            kw = {"constraint": constraint} if constraint is not None else {}
            h = self.engine.submit(inputs, params, **kw)
            self._sinks[h.id] = _Sink(h, loop, q)
            self._forward(self._sinks[h.id])  # max_new_tokens=0 finishes at submit
            return h

        try:
            handle = await asyncio.wrap_future(self._call(do))
        except BaseException:
            self._done()
            raise
        return Stream(self, handle, q)

    def cancel(self, request_id: int) -> None:
        self._call(lambda: self.engine.cancel(request_id) and self._forward(self._sinks.get(request_id)),
                   wait=False)

    def run(self, fn: Callable[[], Any]) -> Future:
        """Run fn() on the engine thread between steps (engine.stats, reconfiguration)."""
        return self._call(fn)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)

    # -- the engine thread -------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], wait: bool = True) -> Future:
        fut: Future = Future()
        self._calls.put((fn, fut if wait else None))
        self._wake.set()
        return fut

    def _done(self) -> None:
        with self._lock:
            self.active -= 1

    def _forward(self, sink: _Sink | None) -> None:
        """Hand the request's queued events to its event loop; forget it once finished."""
        if sink is None:
            return
        req = sink.handle.request
        while req.events:
            ev = req.events.popleft()
            if ev.finished and req.error is not None and ev.finish_reason == "error":
                payload: Any = req.error
            else:
                payload = ev
            self._post(sink, payload)
        if req.finished:
            self._sinks.pop(req.id, None)
            self._done()

    @staticmethod
    def _post(sink: _Sink, payload: Any) -> None:
        try:
            sink.loop.call_soon_threadsafe(sink.queue.put_nowait, payload)
        except RuntimeError:  # the client's event loop is gone (server shutting down)
            pass

    def _loop(self) -> None:
        while not self._stop:
            while True:
                try:
                    fn, fut = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    out = fn()
                    if fut is not None:
                        fut.set_result(out)
                except BaseException as exc:  # handed to the caller (ValueError -> 400)
                    if fut is not None:
                        fut.set_exception(exc)
                    else:
                        log.exception("engine call failed")
            if not self.engine.busy:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.engine.step()
            except Exception as exc:  # a bug: fail every live request rather than hang them
                log.exception("engine step failed")
                for rid, sink in list(self._sinks.items()):
                    self.engine.cancel(rid)
                    sink.handle.request.events.clear()
                    self._post(sink, RuntimeError(f"engine failure: {type(exc).__name__}"))
                    self._sinks.pop(rid, None)
                    self._done()
                continue
            for sink in list(self._sinks.values()):
                self._forward(sink)
