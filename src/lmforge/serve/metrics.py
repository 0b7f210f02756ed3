"""The measures the server keeps for `GET /metrics` (Prometheus text format): request latency and
time-to-first-token histograms, and HTTP responses counted by endpoint and status."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum and count)."""

    def __init__(self, buckets: Iterable[float]):
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self.counts[i] += 1
            self.sum += value
            self.count += 1

    def render(self, name: str, help: str) -> list[str]:
        with self._lock:
            lines = [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
            lines += [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
            lines += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]
        return lines


@dataclass
class Metrics:
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    responses: dict[tuple[str, int], int] = field(default_factory=dict)  # (endpoint, status) -> count

    def count_response(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.responses[key] = self.responses.get(key, 0) + 1
