"""Shards: bytes + hash round trip, tamper detection, versions."""

from __future__ import annotations

import dataclasses
import json
import shutil

import h5py
import numpy as np
import pytest

from store import IntegrityError, StoreError, sha256_file


def test_round_trip_arrays_hash_and_attrs(store, make_arrays, attrs):
    arrays = make_arrays()
    info = store.write_shard("icl", 1, arrays, attrs)

    assert info.path == store.root / "experiments/icl/shards/round-0001.v1.h5"
    assert (info.round, info.version, info.active, info.count) == (1, 1, True, 12)
    assert info.sha256 == sha256_file(info.path)
    assert info.sampler_config == attrs["sampler_config"] and info.seed == 7
    out = store.read_shard(info)
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k
    # Readable with plain h5py, as the module docstring shows.
    with h5py.File(info.path, "r") as f:
        assert f["samples"].shape == (12, 1, 8, 8) and f["samples"].compression == "gzip"
        assert json.loads(f.attrs["sampler_config"]) == attrs["sampler_config"]
        assert f.attrs["source_checkpoint"] == attrs["source_checkpoint"]
        assert (f.attrs["round"], f.attrs["version"], f.attrs["format_version"]) == (1, 1, 1)


def test_dtypes_are_cast_and_bad_shapes_refused(store, make_arrays, attrs):
    arrays = make_arrays()
    arrays["samples"] = arrays["samples"].astype(np.float64)
    info = store.write_shard("icl", 1, arrays, attrs)
    assert store.read_shard(info)["samples"].dtype == np.float32
    bad = make_arrays()
    bad["target"] = bad["target"][:3]
    with pytest.raises(StoreError, match="target"):
        store.write_shard("icl", 1, bad, attrs)
    with pytest.raises(StoreError, match="4-D"):
        store.write_shard("icl", 1, {**make_arrays(), "samples": np.zeros((12, 64))}, attrs)
    assert [s.version for s in store.shards("icl")] == [1]  # nothing recorded


def _expect_integrity(store, info):
    with pytest.raises(IntegrityError) as e:
        store.read_shard(info)
    msg = str(e.value)
    assert "experiments/icl/shards/round-0001.v1.h5" in msg
    assert "icl synthesize --round 1 --force" in msg
    assert "\n" not in msg
    return msg


def test_ctrl_c_between_the_rename_and_the_row_leaves_no_shard(store, make_arrays, attrs,
                                                                monkeypatch):
    from store import workspace

    def interrupt(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace, "fsync_dir", interrupt)  # right after the rename
    with pytest.raises(KeyboardInterrupt):
        store.write_shard("icl", 1, make_arrays(), attrs)
    monkeypatch.undo()
    assert store.shards("icl", 1) == []
    assert not list((store.root / "experiments/icl").rglob("round-0001.*"))


def test_flipped_byte(store, make_arrays, attrs):
    info = store.write_shard("icl", 1, make_arrays(), attrs)
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    assert "sha256" in _expect_integrity(store, info)


def test_truncated(store, make_arrays, attrs):
    info = store.write_shard("icl", 1, make_arrays(), attrs)
    data = info.path.read_bytes()
    info.path.write_bytes(data[: len(data) // 3])
    _expect_integrity(store, info)


def test_missing(store, make_arrays, attrs):
    info = store.write_shard("icl", 1, make_arrays(), attrs)
    info.path.unlink()
    assert "missing" in _expect_integrity(store, info)


def test_replaced_by_another_rounds_shard(store, make_arrays, attrs):
    one = store.write_shard("icl", 1, make_arrays(seed=1), attrs)
    two = store.write_shard("icl", 2, make_arrays(seed=2), attrs)
    shutil.copyfile(two.path, one.path)
    assert "sha256" in _expect_integrity(store, one)


def test_edited_with_h5py(store, make_arrays, attrs):
    info = store.write_shard("icl", 1, make_arrays(), attrs)
    with h5py.File(info.path, "r+") as f:
        f["target"][0] = (f["target"][0] + 1) % 10
    assert "sha256" in _expect_integrity(store, info)


def test_wrong_round_attr_is_caught_even_with_matching_hash(store, make_arrays, attrs):
    # A catalog row pointing at a file with the right bytes but the wrong round (e.g. a
    # row edited by hand): structure checks run after the hash check.
    one = store.write_shard("icl", 1, make_arrays(), attrs)
    two = store.write_shard("icl", 2, make_arrays(), attrs)
    lying = dataclasses.replace(two, round=1, path=two.path)
    with pytest.raises(IntegrityError, match="holds round 2 v1, but the catalog says round 1"):
        store.read_shard(lying)
    assert store.read_shard(one)["samples"].shape == (12, 1, 8, 8)


def test_versions_keep_the_old_one_readable(store, make_arrays, attrs):
    v1 = store.write_shard("icl", 1, make_arrays(seed=1), attrs)
    v2 = store.write_shard("icl", 1, make_arrays(seed=2), attrs)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.path.name == "round-0001.v2.h5"
    assert store.active_shard("icl", 1).version == 2
    assert [(s.version, s.active) for s in store.shards("icl", round=1)] == [(1, False), (2, True)]
    old = store.shards("icl", round=1)[0]
    assert np.array_equal(store.read_shard(old)["samples"], make_arrays(seed=1)["samples"])


def test_active_shards_names_the_missing_round(store, make_arrays, attrs):
    store.write_shard("icl", 1, make_arrays(), attrs)
    store.write_shard("icl", 3, make_arrays(), attrs)
    assert [s.round for s in store.active_shards("icl", 1)] == [1]
    with pytest.raises(StoreError, match=r"no shard for round 2; run `icl synthesize --round 2"):
        store.active_shards("icl", 3)
    assert store.active_shard("icl", 2) is None


def test_a_part_claim_holds_across_machines_on_postgresql(pg_server, tmp_path):
    import psycopg

    from store import BusyError, Store
    from store.locking import advisory_key

    with Store.init(tmp_path / "ws", pg_server.new_url()) as st:
        st.create_experiment("icl", {"method": "icl"})
        with st.files.part_claim("icl", 1, 1, 2):  # free: claimed, and released after
            pass
        # Another machine drawing part 2/2: the same workspace on shared storage, so no
        # flock of ours sees it; the server's advisory lock does.
        dsn = st.catalog.engine.url.set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (advisory_key("icl@part-2-of-2"),))
            with pytest.raises(BusyError, match=r"^part 2/2 of 'icl' is being drawn by "
                               r"another icl process"):
                with st.files.part_claim("icl", 1, 2, 2):
                    pass
            with st.files.part_claim("icl", 1, 1, 2):  # another part is not held up
                pass
            other.execute("SELECT pg_advisory_unlock(%s)", (advisory_key("icl@part-2-of-2"),))
        with st.files.part_claim("icl", 1, 2, 2):
            pass
