"""The corpus stage: what holds across a model's prompts (shared neuron basis, neuron dashboards,
phrasing comparisons, corpus-wide projections). Run `python -m lens_pipeline.corpus`."""
