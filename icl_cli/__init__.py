"""icl: Introspective Classifier Learning (Jin, Lazarow and Tu, 2017) as a command-line toolkit."""

__version__ = "0.1.0"
