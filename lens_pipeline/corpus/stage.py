"""The corpus stage's command: neuron dashboards (and the corpus token PCA) for each model of a save path.

    python -m lens_pipeline.corpus --save-path attn_data [--model NAME] [--top-k 20] [--window 8] [--pca]

Phrasing comparisons need no build: the viewer computes them from the caches on request.

Incremental: a rerun after the activations stage added (or pruned) caches updates what changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from lens_pipeline.corpus import neurons, projection
from lens_pipeline.store import index


def models_with_caches(save_path: Path) -> list[str]:
    rows = index.current_caches(index.latest(index.read_rows(save_path, warn=lambda m: None)).values())
    return sorted({model for model, _ in rows})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lens_pipeline.corpus",
                                     description="Neuron dashboards over every current cache of a model's shared "
                                     "neuron basis, written to SAVE_PATH/corpus/<model>/; reruns update incrementally.")
    parser.add_argument("--save-path", default="attn_data", help="the activations stage's output folder (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name(s), comma-separated (default: every model with caches)")
    parser.add_argument("--top-k", type=int, default=neurons.DashboardSettings.top_k, help="top contexts kept per neuron")
    parser.add_argument("--window", type=int, default=neurons.DashboardSettings.window,
                        help="tokens shown on each side of a top context")
    parser.add_argument("--pca", action="store_true",
                        help="also the token PCA over the whole prompt set on the shared basis (corpus/<model>/pca.json; "
                        "recomputed in full: it reads every cache)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    save_path = Path(args.save_path)
    models = [m.strip() for m in args.model.split(",")] if args.model else models_with_caches(save_path)
    settings = neurons.DashboardSettings(top_k=args.top_k, window=args.window)
    failed = 0
    for model in models:
        try:
            report = neurons.build(save_path, model, settings)
        except ValueError as error:
            print(f"{model}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{model}: neuron dashboards over {report.prompts} cache(s): {report.parts_computed} new, "
              f"{report.parts_removed} removed, {report.windows_read} read for contexts; {report.bytes} bytes; "
              f"{report.seconds:.2f} s -> {neurons.corpus_dir(save_path, model)}", file=sys.stderr)
        for reason in report.skipped:
            print(f"  skipped {reason}", file=sys.stderr)
        if args.pca:
            result = projection.write_pca(save_path, model)
            print(f"{model}: token PCA over {result['n_tokens']} tokens, explained {result['explained']}", file=sys.stderr)
    return 1 if failed else 0
