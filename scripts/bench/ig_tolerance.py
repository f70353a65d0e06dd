"""Integrated gradients to a tolerance against fixed steps: completeness error, steps used and time.

    python -m scripts.bench.ig_tolerance                                  # data/small.jsonl, SmolLM2, CPU
    python -m scripts.bench.ig_tolerance --prompts data/prompts.jsonl --limit 20 --json /tmp/ig.json
    python -m scripts.bench.ig_tolerance --model tiny-llama --random-weights --limit 2 --fixed 8

Each prompt set runs once with `--ig-steps FIXED` alone (fixed steps, as before the tolerance
existed) and once with the tolerance (`--ig-tolerance`, default 1 %, from `--ig-steps` 64 up to
`--ig-max-steps`), through the activations stage in this process (the model loads once). It
reports, per run, the wall time, the completeness error (max and median over targets), how many
targets used each step count, and the targets still over the tolerance at the cap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lens_pipeline.activations import run_activations
from lens_pipeline.activations.cli import IG_DEFAULT_TOLERANCE, ig_options
from lens_pipeline.store import index
from lens_pipeline.store.cache import ExtractSettings, load

from .common import command_parser, markdown_header, markdown_row, scratch, timed, write_json, write_jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--prompts", default="data/small.jsonl")
    parser.add_argument("--limit", type=int, default=0, help="the file's first N prompts (default: all)")
    parser.add_argument("--fixed", type=int, default=64, help="the fixed-step run's --ig-steps")
    parser.add_argument("--tolerance", type=float, default=IG_DEFAULT_TOLERANCE)
    parser.add_argument("--max-steps", type=int, default=ExtractSettings.ig_max_steps)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--runs", default="fixed,tolerance",
                        help="which runs: fixed, tolerance or both (a long set can run the tolerance alone)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser


def measure(args: argparse.Namespace, prompts: Path, work: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    save_path = work / name
    seconds, summary = timed(lambda: run_activations(
        args.model, prompts, save_path, batch_size=args.batch_size, progress=False, attribution="ig",
        random_weights=args.random_weights, log=lambda message: None, **options))
    errors: list[float] = []
    steps: list[int] = []
    for row in index.current_caches(index.latest(index.read_rows(save_path)).values()).values():
        cache = load(save_path / row["path"])
        completeness = cache.array("ig_completeness")
        errors += completeness.tolist()
        steps += (cache.array("ig_steps_used").tolist() if cache.has("ig_steps_used")
                  else [options["ig_steps"]] * len(completeness))
    values = np.array(errors, dtype=np.float64)
    return {"run": name, "options": options, "prompts": summary.written, "targets": len(errors), "seconds": seconds,
            "error_max": float(np.nanmax(values)), "error_median": float(np.nanmedian(values)),
            "steps_used": {str(s): steps.count(s) for s in sorted(set(steps))}, "over_tolerance": summary.ig_over_tolerance}


def print_table(results: dict[str, Any]) -> None:
    print(f"{results['model']}, {results['prompts']}: integrated gradients, CPU\n")
    print(markdown_header(["run", "prompts", "wall s", "error max", "error median", "targets per steps used", "over"]))
    for run in results["runs"]:
        used = ", ".join(f"{count} × {steps}" for steps, count in run["steps_used"].items())
        print(markdown_row([run["run"], run["prompts"], f"{run['seconds']:.1f}", f"{run['error_max']:.2%}",
                            f"{run['error_median']:.2%}", used, len(run["over_tolerance"])]))
    if len(results["runs"]) == 2:
        fixed, adaptive = results["runs"]
        print(f"\ncost of the tolerance: {adaptive['seconds'] / fixed['seconds']:.2f}x the fixed run's time")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    lines = lines[: args.limit] if args.limit else lines
    with scratch("bench_ig_") as work:
        prompts = write_jsonl(work / "prompts.jsonl", [json.loads(line) for line in lines if line.strip()])
        chosen = {name.strip() for name in args.runs.split(",")}
        runs = []
        if "fixed" in chosen:
            runs.append(measure(args, prompts, work, f"fixed {args.fixed}", ig_options(args.fixed, None)))
        if "tolerance" in chosen:
            runs.append(measure(args, prompts, work, f"tolerance {args.tolerance:.2%}",
                                {**ig_options(None, args.tolerance), "ig_max_steps": args.max_steps}))
    label = f"{args.prompts}" + (f" (first {args.limit})" if args.limit else "")
    results = {"model": args.model, "prompts": label, "runs": runs}
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
