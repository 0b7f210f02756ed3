"""Train for a wall-clock budget with a step-based learning-rate schedule that still completes."""
from __future__ import annotations


class TimeBudget:
    """`on_step` callback that keeps the step-based lr schedule in line with a time budget.

    After every optimizer step it sets `max_steps` to the steps done plus the steps that fit in
    the remaining time at the rate measured so far, so the schedule's progress follows the
    fraction of the budget used even when the machine speeds up or slows down. Without it a
    `max_seconds` stop on a slow machine cuts a cosine schedule off while the rate is still high.
    The run's stop reason is the time budget, since that is what set the number of steps.
    """

    def __init__(self, seconds: float, *, min_steps: int = 5):
        self.seconds, self.min_steps = seconds, min_steps

    def __call__(self, trainer) -> None:
        st = trainer.state
        if st.step < self.min_steps or st.wall_seconds <= 0:
            return
        rate = st.wall_seconds / st.step
        remaining = max(0.0, self.seconds - st.wall_seconds)
        trainer.cfg.max_steps = max(st.step + 1, st.step + int(remaining / rate))
        trainer.stop_reason = "max_seconds"

