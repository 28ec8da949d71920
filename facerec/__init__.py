"""facerec: the core shared by the rest, worker and logs entrypoints."""

__version__ = "0.1.0"
