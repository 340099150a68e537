"""xbench: zero-shot cross-lingual transfer evaluation."""

__version__ = "0.1.0"
