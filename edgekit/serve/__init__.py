"""edgekit serve: TensorFlow Serving's REST API on the TFLite runtime and numpy alone.

Device world: nothing here imports tensorflow (tests/test_serve.py proves it in the
server's own process). codec.py (bodies <-> numpy), repository.py (versions, polling,
atomic swap, interpreter pools), app.py (routes, status codes), metrics.py (Prometheus),
server.py (start-up, logs, shutdown).
"""
