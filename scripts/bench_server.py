"""tests/test_server.py imports `synthetic_index` from here; the viewer benchmark itself is
scripts/bench/server.py (`python -m scripts.bench.server`)."""

from bench.server import synthetic_index  # noqa: F401  (scripts/ on sys.path, as the tests put it)
