"""What activation patching costs: each sweep's throughput against the bare batched forward on the
same rows, and how much faster attribution patching estimates the same sweeps.

    python -m scripts.bench.patching                                   # SmolLM2, CPU, the IOI pair of data/causal.jsonl
    python -m scripts.bench.patching --sites resid_pre --repeats 5 --json /tmp/bench_patching.json
    python -m scripts.bench.patching --model tiny-llama --random-weights --repeats 1

"forward" is the bare forward on the same number of rows of the corrupted prompt, in the same
chunks, with no hooks, stopped at the final norm and unembedded at the last position (what a patch
row needs); "sweep" is lens_pipeline.capture.causal's exact sweep of one site. Throughput ratio =
forward time / sweep time (goal >= 0.8). Runs alternate (forward, sweep) and the median of the
pairs' ratios is reported. "attribution patching" times the gradient estimate of every site against
the exact sweeps of every site (speed-up = exact / estimate).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from lens_pipeline.capture import models
from lens_pipeline.capture.causal import corruption_of
from lens_pipeline.capture.causal import patching as sweeps
from lens_pipeline.capture.causal.metric import metric_for
from lens_pipeline.capture.causal.runs import capture, last_logits, rows_per_chunk
from lens_pipeline.capture.causal.sites import hook_of, shape_of
from lens_pipeline.capture.explain.targets import Targets
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.capture.tokens import tokenize

from .common import REPO, alternate, command_parser, markdown_header, markdown_row, timed, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--pairs", default=str(REPO / "data" / "causal.jsonl"), help="JSONL of prompt pairs; the first is used")
    parser.add_argument("--sites", default="resid_pre,attn_out,mlp_out,heads", help="sites to sweep, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="alternating (forward, sweep) pairs per site")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser


def bare_forward(bridge: Any, ids: list[int], rows: int) -> None:
    """The same rows in the same chunks as a sweep, with no hooks."""
    chunk = rows_per_chunk(len(ids))
    with torch.no_grad():
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            last_logits(bridge, torch.tensor([ids]).expand(n, -1), [])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = models.load_model(models.resolve_source(args.model, args.random_weights), "cpu", "float32")
    record = json.loads(Path(args.pairs).read_text(encoding="utf-8").splitlines()[0])
    ids = tokenize(model, record["text"], 1024).ids
    corruption = corruption_of(model, Prompt(record["text"], f"{args.pairs}:1", record), ids, 1024)
    assert corruption is not None, "the first line has no \"corrupt\" field"
    shape, sites = shape_of(model), [s.strip() for s in args.sites.split(",") if s.strip()]
    names = sorted({hook_of(site, layer) for site in sites for layer in range(shape[0])})
    clean_logits, acts = capture(model.bridge, torch.tensor([ids]), names, [])
    metric = metric_for("logit_diff", Targets(), clean_logits)
    clean = float(metric(clean_logits[None])[0])
    with torch.no_grad():
        corrupt = float(metric(last_logits(model.bridge, torch.tensor([corruption.ids]), []))[0])
    results: dict[str, Any] = {"model": model.source.name, "tokens": len(ids), "torch_threads": torch.get_num_threads(),
                               "sites": [], "repeats": args.repeats}
    exact_total = 0.0
    for site in sites:
        rows = len(sweeps.site_edits(site, *shape, len(ids))[0])
        forward_s, sweep_s = alternate(lambda: timed(lambda: bare_forward(model.bridge, corruption.ids, rows))[0],
                                       lambda: timed(lambda: sweeps.exact(model.bridge, corruption, acts, site, shape, metric,
                                                                          clean, corrupt))[0], args.repeats)
        ratio = statistics.median(f / s for f, s in zip(forward_s, sweep_s))
        exact_total += statistics.median(sweep_s)
        results["sites"].append({"site": site, "rows": rows, "forward_s": statistics.median(forward_s),
                                 "sweep_s": statistics.median(sweep_s), "throughput_ratio": ratio})
    def estimate() -> None:
        sweeps.attribution(model.bridge, corruption, acts, tuple(sites), shape, metric, clean, corrupt)

    estimate_s = [timed(estimate)[0] for _ in range(args.repeats)]
    results["attribution_patching"] = {"exact_s": exact_total, "estimate_s": statistics.median(estimate_s),
                                       "speedup": exact_total / statistics.median(estimate_s)}
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return 0


def print_table(results: dict[str, Any]) -> None:
    print(f"{results['model']}, CPU ({results['torch_threads']} threads), a {results['tokens']}-token pair, "
          f"median of {results['repeats']} alternating pairs\n")
    print(markdown_header(["site", "patch rows", "bare forward s", "sweep s", "throughput vs forward"]))
    for site in results["sites"]:
        print(markdown_row([site["site"], site["rows"], f"{site['forward_s']:.2f}", f"{site['sweep_s']:.2f}",
                            f"{site['throughput_ratio']:.2f}"]))
    ap = results["attribution_patching"]
    print(f"\nattribution patching of every site: {ap['estimate_s']:.2f} s against {ap['exact_s']:.2f} s exact "
          f"({ap['speedup']:.0f}x faster)")


if __name__ == "__main__":
    sys.exit(main())
