"""The wsss pipeline: one module per stage, each a function from a config and input artifacts to output artifacts."""

__version__ = "0.1.0"
