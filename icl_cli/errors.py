"""The errors a user can fix, in a module of their own: the command line catches them
without importing torch (``icl status`` and ``icl report`` never need it)."""

from __future__ import annotations


class StepError(Exception):
    """A user-facing problem with a step's inputs (one line: what and what to run)."""


class DataError(ValueError):
    """A data problem a user can fix; the message is one line naming the file or folder."""
