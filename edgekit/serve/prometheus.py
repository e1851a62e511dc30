"""Prometheus metrics in the text exposition format, without a client library:
counters and histograms keyed by label values, safe to update from many threads."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    def escape(value: str) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{n}="{escape(v)}"' for n, v in zip(names, values))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...]):
        self.name, self.help, self.labels = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[tuple(map(str, values))] += amount

    def value(self, *values: str) -> float:
        return self._values.get(tuple(map(str, values)), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{{{_labels(self.labels, key)}}} {value:g}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labels, self.buckets = name, help_text, labels, tuple(buckets)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, seconds: float, *values: str) -> None:
        key = tuple(map(str, values))
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sums[key] += seconds

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, counts in sorted(self._counts.items()):
                labels = _labels(self.labels, key)
                cumulative = 0
                for bound, count in zip(self.buckets + (float("inf"),), counts):
                    cumulative += count
                    edge = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'{self.name}_bucket{{{labels},le="{edge}"}} {cumulative}')
                lines.append(f"{self.name}_sum{{{labels}}} {self._sums[key]:.6f}")
                lines.append(f"{self.name}_count{{{labels}}} {cumulative}")
        return lines


class ServerMetrics:
    """What `GET /metrics` exposes."""

    def __init__(self) -> None:
        self.requests = Counter("edgekit_requests_total",
                                "Requests by model, version, API and status (HTTP status, or gRPC code name).",
                                ("model", "version", "api", "code"))
        self.latency = Histogram("edgekit_request_duration_seconds",
                                 "Time from request received to reply ready, by model, version and API.",
                                 ("model", "version", "api"))
        self.inference = Histogram("edgekit_inference_duration_seconds",
                                   "Time inside the interpreter (queueing for one included), by model and version.",
                                   ("model", "version"))
        self.errors = Counter("edgekit_request_errors_total",
                              "Requests answered with an error, by HTTP status or gRPC code name (protocol-level "
                              "refusals included: 408, 413, 431, 503 for too many connections).",
                              ("code",))
        self.loads = Counter("edgekit_model_load_events_total",
                             "Model version load events: loaded, load_failed, unloaded.", ("model", "version", "event"))

    def predicts(self) -> float:
        """Predict requests answered so far, both doors."""
        with self.requests._lock:
            return sum(v for key, v in self.requests._values.items() if key[2] in ("predict", "grpc_predict"))

    def render(self, served: dict[str, list[int]], gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """`gauges`: name -> (help, value), read when scraped (request memory, connections)."""
        lines = []
        for metric in (self.requests, self.latency, self.inference, self.errors, self.loads):
            lines.extend(metric.render())
        lines += ["# HELP edgekit_model_versions_served Versions of each model now taking traffic.",
                  "# TYPE edgekit_model_versions_served gauge"]
        lines += [f'edgekit_model_versions_served{{model="{name}"}} {len(versions)}' for name, versions in served.items()]
        for name, (help_text, value) in (gauges or {}).items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
