"""posttrain: the utility package of the posttrain-course labs (see docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"
