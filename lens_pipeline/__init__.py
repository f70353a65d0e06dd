"""lens_pipeline: prompts -> model -> cache -> figures -> index -> viewer."""

__version__ = "0.1.0"
