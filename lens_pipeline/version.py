"""The package's version: below every stage, so the index rows, the viewer and the server can record
it without importing the package's front (lens_pipeline/__init__.py, which imports the stages)."""

__version__ = "0.1.0"
