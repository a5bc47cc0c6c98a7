"""Orchestration: each step reads the store, calls ``icl_cli.algo``, writes the store."""
