"""The PostgreSQL catalog holds what real steps record (the suites in this folder run
their steps on it: test_reliability_concurrency.py, test_reliability_crash.py)."""

from __future__ import annotations

import numpy as np
import pytest

from icl_cli.steps.common import derive_seed
from store import Store


@pytest.mark.xfail(strict=True, reason="store/orm.py: shards.seed is an Integer, 32 bits on "
                   "PostgreSQL; a 63-bit derive_seed() seed is 'integer out of range' "
                   "(pgseed.py works around it in the suites' children until it is a BigInteger)")
def test_a_synthesize_seed_fits_a_postgresql_catalog(pg_server, tmp_path):
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
