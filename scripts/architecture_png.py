"""docs/architecture.png for the README: the `architecture` figure of a model, drawn from its model card
exactly as the figures stage writes it (same function, same renderer).

    python scripts/architecture_png.py                          # SmolLM2: its card is captured in a temp folder
    python scripts/architecture_png.py --save-path attn_data    # the card the activations stage wrote there
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

from lens_pipeline.capture import model_card, models
from lens_pipeline.draw.builtins.architecture import draw_architecture
from lens_pipeline.figures import render
from lens_pipeline.store import index
from lens_pipeline.store.cache import write_atomic


def card_from(save_path: str | None, model: str) -> model_card.ModelCard:
    """The save path's card of `model`, else a fresh one captured from the loaded model."""
    source = models.resolve_source(model)
    if save_path:
        return model_card.load(Path(save_path) / model_card.card_relpaths(source.name)[0])
    with tempfile.TemporaryDirectory() as folder:
        loaded = models.load_model(source, "cpu", "float32")
        model_card.ensure(loaded, folder, functools.partial(index.append_rows, folder), print)
        return model_card.load(Path(folder) / model_card.card_relpaths(source.name)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-path", default=None, help="read the model card from here (default: capture one)")
    parser.add_argument("--model", default="smollm2", help="model name as the activations stage takes it")
    parser.add_argument("--out", default="docs/architecture.png")
    args = parser.parse_args(argv)
    data = render(draw_architecture(card_from(args.save_path, args.model)), "png")
    write_atomic(Path(args.out), data, durable=False)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
