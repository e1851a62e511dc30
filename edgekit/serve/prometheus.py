"""Prometheus metrics in the text exposition format, without a client library:
counters and histograms keyed by label values, safe to update from many threads, and
summed across the processes of `edgekit serve --workers N` (`MetricsFolder`)."""
from __future__ import annotations

import bisect
import json
import os
import threading
from collections import defaultdict
from pathlib import Path

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _number(value: float) -> str:
    """Every digit: `:g` would print 1234567 requests as 1.23457e+06, and a counter would
    stand still for thousands of requests."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


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

    def state(self) -> list:
        with self._lock:
            return [[list(key), value] for key, value in self._values.items()]

    def absorb(self, state: list) -> None:
        """Add another process's `state()` to these counts."""
        with self._lock:
            for key, value in state:
                self._values[tuple(key)] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{{{_labels(self.labels, key)}}} {_number(value)}")
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

    def state(self) -> list:
        with self._lock:
            return [[list(key), list(counts), self._sums[key]] for key, counts in self._counts.items()]

    def absorb(self, state: list) -> None:
        with self._lock:
            for key, counts, total in state:
                key = tuple(key)
                mine = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
                for i, count in enumerate(counts[:len(mine)]):
                    mine[i] += count
                self._sums[key] += total

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

    def _all(self) -> dict:
        return {"requests": self.requests, "latency": self.latency, "inference": self.inference,
                "errors": self.errors, "loads": self.loads}

    def state(self) -> dict:
        return {name: metric.state() for name, metric in self._all().items()}

    def absorb(self, state: dict) -> None:
        for name, metric in self._all().items():
            metric.absorb(state.get(name, []))

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
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        return "\n".join(lines) + "\n"


class MetricsFolder:
    """How the worker processes of one server (`--workers N`) answer a scrape for all of
    them: each writes its counts and gauges to FOLDER/worker-<pid>.json, four times a second
    from its event loop (so the file's age is also its heartbeat, workers.py) and again when
    it is scraped; the scraped worker sums every file. Every sum is of files that only move
    forward, so two scrapes answered by different workers never see a total go down (adding
    one worker's live figures to the others' files did: helper-8 saw 133 drops in 377
    scrapes). A worker that died keeps its file, so its counts stay in the totals (less the
    last quarter second, if it was killed); only its gauges drop out."""

    def __init__(self, folder: Path, metrics: ServerMetrics, gauges) -> None:
        self.folder, self.metrics, self.gauges = Path(folder), metrics, gauges
        self.path = self.folder / f"worker-{os.getpid()}.json"

    def stop(self) -> None:
        """The last write, as the worker stops: its counts stay in the totals, its gauges go."""
        self.write(live=False)

    def write(self, live: bool = True) -> None:
        document = {"pid": os.getpid(), "live": live, "metrics": self.metrics.state(),
                    "gauges": {name: list(value) for name, value in self.gauges().items()} if live else {}}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, self.path)  # a reader sees the old file or the new one, never half

    def _documents(self):
        self.write()
        for path in self.folder.glob("worker-*.json"):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # unreadable: skipped rather than a failed scrape

    def predicts(self) -> float:
        """Predicts answered by all workers (the bench endpoint's "served meanwhile")."""
        total = ServerMetrics()
        for document in self._documents():
            total.absorb(document.get("metrics", {}))
        return total.predicts()

    def render(self, served: dict[str, list[int]]) -> str:
        """All workers' figures: counters and histograms summed, gauges summed over the
        workers that are alive, plus how many those are."""
        total, gauges, workers = ServerMetrics(), {}, 0
        for document in self._documents():
            total.absorb(document.get("metrics", {}))
            if document.get("live") and _alive(document.get("pid", 0)):
                workers += 1
                for name, (help_text, value) in document.get("gauges", {}).items():
                    gauges.setdefault(name, [help_text, 0.0])[1] += value
        gauges["edgekit_workers"] = ["Server processes answering on this port (--workers).", workers]
        return total.render(served, {name: tuple(value) for name, value in gauges.items()})


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False  # kill(0, ...) would signal our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
