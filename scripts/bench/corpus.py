"""Benchmark the neuron dashboards: full build, and the incremental update after adding prompts.

    python -m scripts.bench.corpus SAVE_PATH [--model SmolLM2-135M-Instruct] [--added 10]

SAVE_PATH: a save path whose caches hold a shared neuron basis (activations --neuron-basis or
--neurons L:i,...). Works on a copy: the last ADDED caches are held out, the dashboards built over
the rest, the held-out caches put back and the dashboards updated (the incremental case), then
built from scratch over all of them; prints the times and sizes, checks that the incremental result
equals the full one, and exits 1 when the update costs 10% of the full build or more.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lens_pipeline.corpus import neurons
from lens_pipeline.store import index

from .common import command_parser

TARGET = 0.10  # the incremental update's share of a full build


def same_index(a: Path, b: Path) -> bool:
    with np.load(a / "neurons.npz") as x, np.load(b / "neurons.npz") as y:
        arrays = sorted(x.files) == sorted(y.files) and all(
            np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x.files)
    meta = [json.loads((p / "neurons.json").read_text()) for p in (a, b)]
    return arrays and all(m.pop("build") is not None for m in meta) and meta[0] == meta[1]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("save_path")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--added", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work, fresh, held = Path(tmp) / "work", Path(tmp) / "fresh", Path(tmp) / "held"
        shutil.copytree(args.save_path, work, ignore=shutil.ignore_patterns("corpus"))
        rows = [r for (m, _), r in index.current_caches(index.latest(index.read_rows(work)).values()).items() if m == args.model]
        held.mkdir()
        for row in rows[-args.added:]:
            shutil.move(work / row["path"], held / Path(row["path"]).name)
        before = neurons.build(work, args.model)
        for row in rows[-args.added:]:
            shutil.move(held / Path(row["path"]).name, work / row["path"])
        update = neurons.build(work, args.model)
        shutil.copytree(work, fresh, ignore=shutil.ignore_patterns("corpus"))
        started = time.perf_counter()
        full = neurons.build(fresh, args.model)
        full_s = time.perf_counter() - started
        equal = same_index(neurons.corpus_dir(work, args.model), neurons.corpus_dir(fresh, args.model))
    share = update.seconds / full_s
    print(f"{args.model}: full build over {full.prompts} prompts: {full_s:.2f} s, {full.bytes / 1e6:.2f} MB "
          f"(index + parts); over the first {before.prompts}: {before.seconds:.2f} s; adding {args.added}: "
          f"{update.seconds:.2f} s ({100 * share:.1f}% of the full build; target < {100 * TARGET:.0f}%); "
          f"incremental equals full: {equal}")
    return 0 if equal and share < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
