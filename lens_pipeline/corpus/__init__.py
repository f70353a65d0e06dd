"""The corpus stage: what holds across a model's prompts (shared neuron basis, neuron dashboards,
phrasing comparisons, corpus-wide projections, per-head attention statistics). Below the figures
that draw them (draw/builtins/corpus.py); the viewer's corpus endpoints are viewer/corpus.py.
Run `python -m lens_pipeline.corpus`."""
