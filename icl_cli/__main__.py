"""``python -m icl_cli``: the same command line as the ``icl`` console script."""

from icl_cli.cli import icl

if __name__ == "__main__":
    icl()
