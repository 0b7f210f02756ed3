"""Pick PyTorch's CPU thread count by timing training steps, for machines other processes share."""
from __future__ import annotations

import time

import torch


class ThreadTuner:
    """`on_step` callback that times a few steps with each candidate thread count and keeps the fastest.

    PyTorch's intra-op threads meet at a barrier in every parallel region. When other processes are
    busy on the same cores, each barrier waits for the slowest descheduled thread, and a step can take
    several times longer with all threads than with one. Measured with the demo's model on a 2-core
    machine with two busy processes: 1.4 steps/s on 2 threads, 3.6 steps/s on 1 thread; on the idle
    machine 2 threads win (9.5 against 5.6 steps/s). Load changes during a run, so the step time is
    watched and the candidates are timed again when it drifts by more than `drift`.

    Step times are averaged, not their median taken: on shared cores the extra threads mostly cost
    rare long stalls, which a median hides. The longest step of a sample is dropped, as it may hold an
    evaluation or a checkpoint. More threads are kept only when they are at least `margin` faster.
    """

    def __init__(self, *, warmup_steps: int = 5, probe_steps: int = 8, window_steps: int = 40,
                 drift: float = 0.35, margin: float = 0.1, candidates: tuple[int, ...] | None = None,
                 clock=time.perf_counter):
        start = torch.get_num_threads()
        self.candidates = candidates or tuple(sorted({start, max(1, start // 2), 1}, reverse=True))
        self.warmup_steps, self.probe_steps = warmup_steps, probe_steps
        self.window_steps, self.drift, self.margin = window_steps, drift, margin
        self.start = self.chosen = start
        self.rates: dict[int, float] = {}  # thread count -> steps/s at the last timing
        self._queue: list[int] = []        # candidates still to time
        self._times: list[float] = []      # step durations for the candidate (or the window) in progress
        self._chosen_step_time: float | None = None
        self._last, self._clock = None, clock

    def __call__(self, trainer) -> None:
        now = self._clock()
        step_time, self._last = (None if self._last is None else now - self._last), now
        if len(self.candidates) < 2 or trainer.state.step < self.warmup_steps or step_time is None:
            return
        if self._chosen_step_time is None and not self._queue:
            self._start_timing()
            return
        self._times.append(step_time)
        if self._queue:
            self._time_candidate()
        elif len(self._times) >= self.window_steps:
            recent, self._times = _typical(self._times), []
            if abs(recent / self._chosen_step_time - 1.0) > self.drift:
                self._start_timing()

    def _start_timing(self) -> None:
        self._queue, self._times = list(self.candidates), []
        torch.set_num_threads(self._queue[0])

    def _time_candidate(self) -> None:
        # The first step after a switch pays for waking the new thread pool; it is not counted.
        if len(self._times) <= self.probe_steps:
            return
        threads = self._queue.pop(0)
        self.rates[threads] = 1.0 / _typical(self._times[1:])
        self._times = []
        if self._queue:
            torch.set_num_threads(self._queue[0])
            return
        fewest = min(self.rates)
        self.chosen = max(self.rates, key=lambda n: self.rates[n] / (1.0 if n == fewest else 1.0 + self.margin))
        self._chosen_step_time = 1.0 / self.rates[self.chosen]
        torch.set_num_threads(self.chosen)

    def restore(self) -> None:
        """Put back the thread count the process had before training."""
        torch.set_num_threads(self.start)

    def describe(self) -> str:
        """One line on the thread counts timed and the one kept, for the end of a run."""
        if not self.rates:
            return f"{self.chosen} thread(s)"
        timed = ", ".join(f"{n} thread{'s' if n > 1 else ''} {r:.1f} steps/s" for n, r in sorted(self.rates.items()))
        return f"{self.chosen} thread{'s' if self.chosen > 1 else ''} (timed: {timed})"


def _typical(step_times: list[float]) -> float:
    """Mean step time without the longest step (an evaluation or checkpoint may sit in it)."""
    kept = sorted(step_times)[:-1] if len(step_times) > 2 else step_times
    return sum(kept) / len(kept)
