"""edgekit bench: measure convert's artifacts against the original model.

runners.py (one class per engine), timing.py (latency, throughput), memory.py (peak RSS
in a fresh process), measure.py (BenchOptions and the pipeline), results.py (BenchReport:
the JSON, written and read back), report.py (table, HTML),
budgets.py (CI gates). The package is `benchmark`, not `bench`, so that importing it
never shadows the `edgekit.bench()` function.
"""
