"""A small metrics registry with the Prometheus text exposition format (version 0.0.4).

Counters live in the process; gauges are read at scrape time from callbacks (e.g. outbox rows
per state from the database), so a restarted or second replica reports the shared truth.
The registry is created by the composition root and passed in; there is no global one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
GaugeReader = Callable[[], Iterable[tuple[Mapping[str, str], float]]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


@dataclass
class Counter:
    """A monotonically increasing count per label set."""

    name: str
    help: str
    _values: dict[Labels, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (>= 0) to the series with these labels."""
        if amount < 0:
            raise ValueError("counters only go up")
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> list[tuple[Labels, float]]:
        """Every series, sorted by labels."""
        with self._lock:
            return sorted(self._values.items())


@dataclass
class Metrics:
    """The process's counters and scrape-time gauges."""

    counters: dict[str, Counter] = field(default_factory=dict)
    gauges: dict[str, tuple[str, GaugeReader]] = field(default_factory=dict)

    def counter(self, name: str, help_text: str) -> Counter:
        """The counter with this name, created on first use."""
        if name not in self.counters:
            self.counters[name] = Counter(name, help_text)
        return self.counters[name]

    def gauge(self, name: str, help_text: str, reader: GaugeReader) -> None:
        """Register a gauge whose samples `reader` produces at each scrape."""
        self.gauges[name] = (help_text, reader)

    def render(self) -> str:
        """All metrics in the Prometheus text format."""
        lines: list[str] = []
        for name, counter in sorted(self.counters.items()):
            lines += [f"# HELP {name} {counter.help}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(k)} {_number(v)}" for k, v in counter.samples()]
        for name, (help_text, reader) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            samples = sorted((tuple(sorted(lbl.items())), val) for lbl, val in reader())
            lines += [f"{name}{_labels(k)} {_number(v)}" for k, v in samples]
        return "\n".join(lines) + "\n"
