"""What the benchmarks share: their command line's shape, A/B alternation of runs and the median of
the pairs, timing, a child process's wall, CPU and peak RSS, prompt and result files, markdown rows,
the headless Chromium of scripts/screenshots.py.

Imports nothing heavy (no numpy, no torch, no lens_pipeline): scripts.bench.figures pins its thread
counts before numpy loads, and scripts.bench.vs_pattern_lens's process stays small.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

SCRIPTS = Path(__file__).resolve().parents[1]
REPO = SCRIPTS.parent


def command_parser(doc: str | None, module: str) -> argparse.ArgumentParser:
    """A benchmark's parser: `python -m <module>`, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n\n")[0])


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def alternate(first: Callable[[], Any], second: Callable[[], Any], repeats: int,
              report: Callable[[Any, Any], None] | None = None) -> tuple[list[Any], list[Any]]:
    """`repeats` back-to-back pairs (first, then second), each pair reported as it ends: a machine
    whose speed drifts, as shared ones do, moves both runs of a pair alike."""
    firsts, seconds = [], []
    for _ in range(repeats):
        firsts.append(first())
        seconds.append(second())
        if report:
            report(firsts[-1], seconds[-1])
    return firsts, seconds


def median_ratio(numerators: Iterable[float], denominators: Iterable[float]) -> float:
    """The median over pairs of numerator / denominator."""
    return float(statistics.median(n / d for n, d in zip(numerators, denominators)))


# A child's ru_maxrss starts from this process's RSS at the fork (Linux keeps the high-water mark
# across exec), and this process may hold a model: the child reports its own VmHWM as it exits.
_REPORT_PEAK_RSS = """import atexit, os, runpy, sys
def report():
    status = open("/proc/self/status").read()
    sys.stderr.write("\\nbench-peak-rss-kib " + status.split("VmHWM:")[1].split()[0] + "\\n")
atexit.register(report)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python script.py` has it
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_child(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, float]:
    """Wall s, CPU s (user + system, with the children it waited for) and peak RSS bytes (its own
    VmHWM) of a fresh process running `command` ([python, script or -m module, ...]), which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([command[0], "-c", _REPORT_PEAK_RSS, *command[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace", env=env, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak_kib = int(result.stderr.rsplit("bench-peak-rss-kib ", 1)[1].split()[0])
    return {"wall_s": wall, "cpu_s": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
            "peak_rss_bytes": peak_kib * 1024}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """A prompt file (or any JSONL): one record a line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A fresh temporary folder, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_json(path: str | Path, results: dict[str, Any], announce: bool = True) -> None:
    """The results file; `announce`: end the printed table with where it went."""
    Path(path).write_text(json.dumps(results, indent=1), encoding="utf-8")
    if announce:
        print(f"\nwritten: {path}")


def report(results: dict[str, Any], print_table: Callable[[dict[str, Any]], None], path: str | Path) -> int:
    """Print the results' table, then write them to `path` and say so; exit status 0."""
    print_table(results)
    write_json(path, results)
    return 0


def markdown_row(cells: Iterable[Any]) -> str:
    """`| a | b |`."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(cells: Sequence[Any]) -> str:
    """A markdown table's heading row and rule."""
    return markdown_row(cells) + "\n|" + "---|" * len(cells)


def screenshots() -> Any:
    """scripts/screenshots.py (its headless Chromium and page helpers), imported from this folder's parent."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import screenshots

    return screenshots
