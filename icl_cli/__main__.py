"""``python -m icl_cli``: the same command line as the ``icl`` console script."""

from icl_cli.app import main

if __name__ == "__main__":
    main()
