"""A user's own figure, as in a notebook: decorate a function, run the stage, see the file and
its index row. Run it as a script (the tests do):

    python scripts/example_custom_figure.py [--save-path DIR]

It caches two prompts with the embedded SmolLM2 (skipped if already cached), registers
`previous_token_score` (how much each head attends to the token just before the query), draws it
for every layer, and prints what was written.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lens_pipeline.activations import run_activations
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.figures import run_figures
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache


@register_figure(scope="layer", formats=("json", "png"))
def previous_token_score(cache: Cache, layer: int, scale: int = 24) -> dict:
    """Per head, the mean attention each query gives the token right before it (JSON + bar image)."""
    patterns = cache.layer_patterns(layer)  # [H, T, T]
    scores = [float(np.diagonal(head, offset=-1).mean()) for head in patterns]
    bars = np.zeros((scale, len(scores) * scale), dtype=np.uint8)
    for i, score in enumerate(scores):
        bars[scale - int(round(score * scale)) :, i * scale : (i + 1) * scale - 2] = 255
    return {"scores.json": {"layer": layer, "previous_token_score": scores}, "bars.png": Image.fromarray(bars)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-path", type=Path, default=Path(tempfile.mkdtemp(prefix="lens_example_")))
    args = parser.parse_args()
    prompts = args.save_path / "prompts.jsonl"
    args.save_path.mkdir(parents=True, exist_ok=True)
    prompts.write_text(
        json.dumps({"text": "Double, double toil and trouble; fire burn and cauldron bubble."}) + "\n"
        + json.dumps({"text": "Friends, Romans, countrymen, lend me your ears."}) + "\n"
    )
    run_activations("smollm2", prompts, args.save_path, progress=False)
    summary = run_figures(args.save_path, figures=["previous_token_score"], progress=False)
    best = max(
        (row for row in summary.rows if row["status"] == "ok"),
        key=lambda row: max(json.loads((args.save_path / row["path"]).read_text())["previous_token_score"]),
    )
    scores = json.loads((args.save_path / best["path"]).read_text())["previous_token_score"]
    print(f"wrote {summary.written} figure(s) into {args.save_path}")
    print(f"strongest previous-token head: L{best['layer']}H{int(np.argmax(scores))} ({max(scores):.2f})")
    print("its index row:", json.dumps({k: best[k] for k in ("function", "layer", "path", "status")}))
    rows = index.read_rows(args.save_path)
    print("index rows for this figure:", sum(r.get("function") == "previous_token_score" for r in rows))


if __name__ == "__main__":
    main()
