"""The PostgreSQL catalog holds what real steps record and takes two writers at once (the
suites in this folder run their steps on it too: test_reliability_concurrency.py,
test_reliability_crash.py); each test here is a bug those suites found."""

from __future__ import annotations

import numpy as np

from icl_cli.steps.common import derive_seed
from store import Store


def test_a_synthesize_seed_fits_a_postgresql_catalog(pg_server, tmp_path):
    """A 63-bit seed (derive_seed) in shards.seed: a 32-bit INTEGER column, as before
    schema 4, made every `icl synthesize` on PostgreSQL fail ("integer out of range")."""
    seed = derive_seed("synthesize", 0, 1, 1)  # what `icl synthesize --round 1` draws with
    assert seed > 2**31
    rng = np.random.default_rng(0)
    arrays = {"samples": rng.normal(size=(4, 1, 8, 8)).astype(np.float32),
              "target": np.arange(4), "steps": np.zeros(4, np.int32),
              "logit": np.zeros(4, np.float32), "passed": np.ones(4, bool)}
    with Store.init(tmp_path / "ws", pg_server.new_url()) as st:
        st.create_experiment("icl", {"method": "icl", "seed": 0})
        info = st.write_shard("icl", 1, arrays, {"seed": seed, "sampler_config": {},
                                                 "source_checkpoint": "ab" * 32})
        assert info.seed == seed


ROUNDS = 100


def _record_at_once(ws, url, start: float, errors) -> None:
    """Body of one of two processes recording the test error of rounds 0..ROUNDS-1 at the
    same time as the other; counts the records that failed into ``errors``."""
    import time

    failed = 0
    with Store.open(ws, url) as st:
        while time.time() < start:
            pass
        for r in range(ROUNDS):
            try:
                st.record_evaluation("icl", r, "test", 0.5, [0.5] * 10, 10)
            except Exception:  # noqa: BLE001  (the unique-constraint violation, one line)
                failed += 1
    with errors.get_lock():
        errors.value += failed


def test_two_writers_replace_one_row_at_once_on_postgresql(pg_server, tmp_path):
    """Two processes "replace any earlier" evaluation of the same rounds at once (as
    ``icl evaluate`` beside an ``icl run`` of one experiment): none fails, as on SQLite.
    Under READ COMMITTED both would find no row and both insert it (the unique constraint:
    18 of 2 x 60 failed in one try here) but for the catalog's write lock
    (``store.locking.catalog_write_lock``, taken by every write transaction)."""
    import multiprocessing as mp
    import time

    ws, url = tmp_path / "ws", pg_server.new_url()
    with Store.init(ws, url) as st:
        st.create_experiment("icl", {"method": "icl", "seed": 0})
    ctx = mp.get_context("fork")
    errors = ctx.Value("i", 0)
    start = time.time() + 1.0
    procs = [ctx.Process(target=_record_at_once, args=(ws, url, start, errors))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert errors.value == 0
    with Store.open(ws, url) as st:
        assert len(st.evaluations("icl")) == ROUNDS  # one row per round, whoever wrote it
