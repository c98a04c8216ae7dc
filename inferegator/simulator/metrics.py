"""Minimal Prometheus text-format counters and histograms for the simulator's /metrics."""

import bisect


class Histogram:
    """A cumulative histogram with fixed upper bounds, rendered in Prometheus text format."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


LATENCY_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                  2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)


def render(model: str, gauges: dict, counters: dict, histograms: dict) -> str:
    """Prometheus exposition text with SGLang's metric names and its model_name label."""
    labels = f'model_name="{model}"'
    lines = []
    for name, value in gauges.items():
        lines += [f"# TYPE sglang:{name} gauge", f"sglang:{name}{{{labels}}} {value}"]
    for name, value in counters.items():
        lines += [f"# TYPE sglang:{name} counter", f"sglang:{name}{{{labels}}} {value}"]
    for name, hist in histograms.items():
        lines.append(f"# TYPE sglang:{name} histogram")
        lines += hist.render(f"sglang:{name}", labels)
    return "\n".join(lines) + "\n"
