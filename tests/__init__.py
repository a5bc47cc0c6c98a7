"""icl's tests, mirroring the packages; what they share is in ``tests.kit``."""
