"""One background thread drives a continuous-batching engine for asyncio request handlers.

An engine may be driven by one thread only, so handlers never touch it: `submit` and `abort`
put commands on a queue that the engine thread drains between steps, and the thread sleeps on
that queue whenever no request is unfinished. Other work on the model (scoring a prompt's tokens)
is handed to the same thread with `call`, so one thread alone ever runs the model. Outputs come
back through the engine's
per-request callbacks, which hand them to the submitting handler's asyncio queue with
`loop.call_soon_threadsafe`, so a handler simply awaits its queue. Statistics are copied after
every step, so readers in other threads never look at the engine mid-step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from lmforge.infer.engine import Engine, EngineStats, RequestOutput
from lmforge.infer.sampling import SamplingParams

log = logging.getLogger("lmforge.serve")

_STOP = object()


class EngineStopped(RuntimeError):
    """The engine thread is not running, so nothing submitted now would ever be answered."""


@dataclass
class Submission:
    """Requests submitted together; `queue` receives `(index, RequestOutput)` for each of them,
    or `(index, exception)` when request `index` was refused or the engine failed."""

    request_ids: list[str]
    queue: asyncio.Queue


class EngineLoop:
    """Runs `engine.step()` continuously in a daemon thread while requests are unfinished."""

    def __init__(self, engine: Engine, *, rate_window_s: float = 10.0):
        self.engine = engine
        self.rate_window_s = rate_window_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._queued_adds = 0
        self._failers: dict[str, Callable[[BaseException], None]] = {}  # engine thread only
        # Outputs produced by the engine thread, handed to the event loops once per step: one wake-up
        # of a loop per step instead of one per streamed token.
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = []
        self._stats = engine.stats()
        self._rate: deque[tuple[float, int]] = deque()
        self.error: BaseException | None = None
        self._stopped = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stopped = False
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        if self._thread is None:
            return
        self._commands.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ called from the event loop
    def submit(self, items: Sequence[tuple[list[int], SamplingParams]], request_id: str, *,
               logprobs: int | None = None) -> Submission:
        """Queue one engine request per (prompt ids, params); must be called from a running event loop.
        `logprobs` (when not None) asks for every generated token's score with that many alternatives.

        The thread starts on first use if nobody started it (an app run without its lifespan events)."""
        if self._thread is None and not self._stopped and self.error is None:
            self.start()
        if not self.alive:
            raise EngineStopped("the generation engine is not running")
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()

        def push(item) -> None:  # engine thread: delivered by the next `_flush`
            self._outbox.append((loop, out, item))

        ids = [f"{request_id}-{i}" for i in range(len(items))]
        with self._lock:
            self._queued_adds += len(items)
        for i, (prompt, params) in enumerate(items):
            self._commands.put(("add", ids[i], i, list(prompt), params, logprobs, push))
        return Submission(ids, out)

    async def call(self, fn: Callable[[], object]):
        """Run `fn()` in the engine thread between two steps and return its result (or raise its exception)."""
        if self._thread is None and not self._stopped and self.error is None:
            self.start()
        if not self.alive:
            raise EngineStopped("the generation engine is not running")
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def push(item) -> None:  # engine thread: delivered by the next `_flush`
            self._outbox.append((loop, done, item))

        self._commands.put(("call", fn, push))
        result = await done
        if isinstance(result, BaseException):
            raise result
        return result

    def abort(self, request_ids: Sequence[str]) -> None:
        self._commands.put(("abort", list(request_ids)))

    # ------------------------------------------------------------ monitoring (any thread)
    def stats(self) -> EngineStats:
        return self._stats

    def queued(self) -> int:
        """Requests submitted but not yet handed to the engine."""
        return self._queued_adds

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last `rate_window_s` seconds of wall-clock time."""
        now = time.monotonic()
        with self._lock:
            samples = list(self._rate)
        if not samples:
            return 0.0
        older = [s for s in samples if s[0] <= now - self.rate_window_s]
        if older:  # the count when the window opened
            n0, span = older[-1][1], self.rate_window_s
        else:  # the server is younger than the window
            n0, span = samples[0][1], max(now - samples[0][0], 1e-3)
        return (samples[-1][1] - n0) / span

    # ------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        try:
            while True:
                idle = not self.engine.has_unfinished()
                try:
                    cmd = self._commands.get(timeout=0.5) if idle else self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
                while cmd is not None:
                    if cmd is _STOP:
                        self._fail_all(EngineStopped("the server is shutting down"))
                        return
                    self._apply(cmd)
                    try:
                        cmd = self._commands.get_nowait()
                    except queue.Empty:
                        cmd = None
                if self.engine.has_unfinished():
                    try:
                        self.engine.step()
                    except Exception as e:  # a failed step must not leave its requests waiting forever
                        log.exception("engine step failed")
                        self._fail_all(e)
                self._flush()
                self._snapshot()
        except BaseException as e:
            self.error = e
            log.exception("the engine thread stopped")
            self._fail_all(EngineStopped(f"the generation engine stopped: {e}"))
            raise
        finally:
            self._flush()

    def _apply(self, cmd) -> None:
        if cmd[0] == "abort":
            for rid in cmd[1]:
                self._failers.pop(rid, None)
                self.engine.abort(rid)
            return
        if cmd[0] == "call":
            _, fn, push = cmd
            try:
                push(fn())
            except Exception as e:
                push(e)
            return
        _, rid, index, prompt, params, logprobs, push = cmd
        with self._lock:
            self._queued_adds -= 1

        def callback(out: RequestOutput) -> None:
            if out.finished:
                self._failers.pop(out.request_id, None)
            push((index, out))

        try:
            self.engine.add_request(prompt, params, rid, callback=callback, logprobs=logprobs)
        except Exception as e:
            push((index, e))
            return
        self._failers[rid] = lambda exc: push((index, exc))

    def _flush(self) -> None:
        """Hand the outbox to the event loops that wait for it, one call per loop."""
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for loop, out, item in batch:
            by_loop.setdefault(loop, []).append((out, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the event loop has closed: nobody waits for these any more
                pass

    def _fail_all(self, exc: BaseException) -> None:
        failers, self._failers = self._failers, {}
        for rid, fail in failers.items():
            fail(exc)
            try:
                self.engine.abort(rid)
            except Exception:
                log.exception("could not abort %s", rid)

    def _snapshot(self) -> None:
        stats = self.engine.stats()
        self._stats = stats
        now = time.monotonic()
        with self._lock:
            if not self._rate or self._rate[-1][1] != stats.generation_tokens:
                self._rate.append((now, stats.generation_tokens))
            # Keep one sample older than the window: the count at the window's start.
            while len(self._rate) > 1 and now - self._rate[1][0] > self.rate_window_s:
                self._rate.popleft()


def _put_all(items: list[tuple[asyncio.Queue | asyncio.Future, object]]) -> None:
    for out, item in items:
        if isinstance(out, asyncio.Future):
            if not out.done():  # its caller may have been cancelled meanwhile
                out.set_result(item)
        else:
            out.put_nowait(item)
