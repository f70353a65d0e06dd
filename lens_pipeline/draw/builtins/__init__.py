"""The built-in figures. Importing this package registers them all (`lens_pipeline.draw.registry`),
with the same decorator a user's own figure functions use."""

from lens_pipeline.draw.builtins import (  # noqa: F401
    architecture,
    architecture3d,
    attention,
    attention_stats,
    causal,
    corpus,
    embedding,
    explain,
    head_roles,
    interactive,
    knitting,
    predictions,
    projection,
    summary,
    tokens,
)
