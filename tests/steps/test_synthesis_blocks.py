"""Why parts are bit-identical: a round runs in blocks of ``BLOCK`` samples, each its own
batch with its own Langevin stream, so a row's bits never depend on the rows beside it;
a round of one block is the one-batch draw of before, bit for bit."""

import numpy as np
import pytest
import torch

from icl_cli.config import SamplerConfig
from icl_cli.errors import StepError
from icl_cli.models import build_model
from icl_cli.steps.draw import BLOCK, Sampling, block_ranges, draw
from icl_cli.steps.parts import parse_part, part_rows
from store import IntegrityError, Store

SHAPE = (1, 12, 12)


def net(mode="softmax"):
    torch.manual_seed(0)
    return build_model("tiny", SHAPE, 3, mode)


def sampler(count, **kw):
    return SamplerConfig(count=count, lr=0.05, max_steps=20, **kw)


def rows_of(out, r):
    return [getattr(out, f)[r.start:r.stop] for f in ("samples", "steps", "logit", "passed")]


@pytest.mark.parametrize("mode", ["softmax", "ova"])
@pytest.mark.parametrize("langevin", [0.0, 0.05])
def test_any_run_of_blocks_equals_those_rows_of_the_whole_round(mode, langevin):
    sc, model = sampler(120, langevin_std=langevin), net(mode)  # 360 rows, blocks of 128
    whole = draw(model, Sampling(sc, block=128), 3, SHAPE, 5, torch.device("cpu"))
    for r in (range(0, 128), range(128, 360), range(256, 360)):
        part = draw(model, Sampling(sc, block=128), 3, SHAPE, 5, torch.device("cpu"), rows=r)
        for a, b in zip(rows_of(part, range(len(r))), rows_of(whole, r), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not whole blocks of 128"):
        draw(model, Sampling(sc, block=128), 3, SHAPE, 5, torch.device("cpu"), rows=range(100, 200))


def test_a_one_block_round_is_the_one_batch_draw_of_before():
    """Shards of rounds of at most BLOCK samples are unchanged, Langevin noise included."""
    sc, model = sampler(BLOCK // 3, langevin_std=0.05), net()
    old = draw(model, Sampling(sc, block=None), 3, SHAPE, 9, torch.device("cpu"))
    new = draw(model, Sampling(sc, block=BLOCK), 3, SHAPE, 9, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(rows_of(old, range(255)),
                                                 rows_of(new, range(255)), strict=True))


def test_blocks_change_the_langevin_noise_of_a_larger_round():
    """What blocks change, said exactly: past the first block, other Langevin draws."""
    sc, model = sampler(120, langevin_std=0.05), net()
    one = draw(model, Sampling(sc, block=None), 3, SHAPE, 9, torch.device("cpu"))
    blocks = draw(model, Sampling(sc, block=128), 3, SHAPE, 9, torch.device("cpu"))
    assert not torch.equal(one.samples[128:], blocks.samples[128:])


def test_part_rows_take_every_nth_block_and_cover_the_round_once():
    assert [part_rows(600, i, 3) for i in (1, 2, 3)] == \
        [[range(0, 256)], [range(256, 512)], [range(512, 600)]]
    assert [part_rows(1030, i, 2) for i in (1, 2)] == [
        [range(0, 256), range(512, 768), range(1024, 1030)],
        [range(256, 512), range(768, 1024)]]
    assert part_rows(200, 1, 1) == [range(0, 200)]
    for n, parts in [(1030, 2), (2000, 3), (2000, 8), (257, 2)]:
        rows = sorted((r for i in range(1, parts + 1) for r in part_rows(n, i, parts)),
                      key=lambda r: r.start)
        assert [x for r in rows for x in r] == list(range(n))
    with pytest.raises(StepError, match="3 part\\(s\\) at most, not 4"):
        part_rows(600, 1, 4)


def test_a_part_of_interleaved_blocks_equals_those_rows_of_the_whole_round():
    sc, model = sampler(150, langevin_std=0.05), net()  # 450 rows, blocks of 128
    whole = draw(model, Sampling(sc, block=128), 3, SHAPE, 5, torch.device("cpu"))
    rows = part_rows(450, 1, 2, block=128)  # blocks 0 and 2
    assert rows == [range(0, 128), range(256, 384)]
    part = draw(model, Sampling(sc, block=128), 3, SHAPE, 5, torch.device("cpu"), rows=rows)
    assert torch.equal(part.samples, torch.cat([whole.samples[0:128], whole.samples[256:384]]))
    assert torch.equal(part.steps, torch.cat([whole.steps[0:128], whole.steps[256:384]]))


def test_block_ranges_cut_at_multiples_of_the_block():
    assert block_ranges(range(2, 9), 4) == [range(2, 4), range(4, 8), range(8, 9)]
    assert block_ranges(range(0, 8), 4) == [range(0, 4), range(4, 8)]
    assert block_ranges(range(0, 0), 4) == []


@pytest.mark.parametrize("text, want", [("1/3", (1, 3)), ("3/3", (3, 3)), ("1/1", (1, 1))])
def test_parse_part(text, want):
    assert parse_part(text) == want


def test_a_part_file_of_other_settings_is_refused(tmp_path):
    st = Store.init(tmp_path)
    st.create_experiment("icl", {"method": "icl"})
    arrays = {"samples": np.zeros((4, 1, 2, 2), np.float32), "target": np.arange(4),
              "steps": np.zeros(4, np.int32), "logit": np.ones(4, np.float32),
              "passed": np.ones(4, bool)}
    attrs = {"seed": 7, "sampler_config": {"count": 2}, "source_checkpoint": "ab" * 32,
             "rows": [[0, 4]], "round_count": 8}
    info = st.write_part("icl", 1, 1, 1, 2, arrays, attrs)
    assert info.path.name == "round-0001.v1.part-1-of-2.h5"
    expect = {"seed": 7, "sampler_config": {"count": 2}, "source_checkpoint": "ab" * 32,
              "part_index": 1, "part_count": 2, "rows": [[0, 4]],
              "round_count": 8}
    got = st.read_part(info, expect, "fix it")
    assert np.array_equal(got["target"], np.arange(4))
    with pytest.raises(IntegrityError, match=r"drawn for other settings \(seed differ\)"):
        st.read_part(info, {**expect, "seed": 8}, "fix it")
    with pytest.raises(IntegrityError, match="part_count, part_index differ"):
        st.read_part(info, {**expect, "part_index": 2, "part_count": 3}, "fix it")
    assert st.verify().ok  # a part file is neither a shard nor a temporary
    st.remove_parts("icl", 1, 1)
    assert not info.path.exists()


def test_the_ranks_join_takes_each_part_of_its_own_set(tmp_path):
    """Rank 0 records the parts the ranks wrote (``log_and_join``): a part file of that
    number drawn with other settings (a later ``--part 2/2`` with another seed, say) is
    never taken for the rank's own, however new it is."""
    import os

    from icl_cli.config import ExperimentConfig, SamplerChanges
    from icl_cli.steps.common import Runtime, experiment_data
    from icl_cli.steps.draw import Plan, plan_round, shard_attrs
    from icl_cli.steps.parts import log_and_join, part_file
    from tests.kit import COMMON, icl, tiny

    icl("init", "-w", tmp_path, "-e", "icl", "--method", "icl", *tiny(count=26), *COMMON)
    runtime = Runtime(device="cpu", threads=1, mlflow=False)
    with Store.open(tmp_path) as st:
        exp = st.experiment("icl")
        cfg = ExperimentConfig.from_dict(exp.config)
        data = experiment_data(exp)
        plan = plan_round(st, exp, cfg, 1, runtime, False, SamplerChanges(),
                          lambda: data.num_classes)
        assert isinstance(plan, Plan) and plan.count == 260  # two blocks: two parts
        own = [part_file(st, exp, cfg, data, plan, i, 2, runtime, "cpu") for i in (1, 2)]
        other = {**shard_attrs(plan), "seed": plan.seed + 1, "rows": [[256, 260]],
                 "round_count": plan.count}
        foreign = st.write_part("icl", 1, plan.version, 2, 2,
                                st.read_part(own[1], {}, "-"), other)
        assert foreign.path != own[1].path
        later = own[1].path.stat().st_mtime + 60
        os.utime(foreign.path, (later, later))  # the newest part 2 on disk
        joined = log_and_join(st, exp, plan, 2, runtime)
        assert joined.count == 260
        logged = [s.config["sha256"] for s in st.steps("icl", name="synthesize-part")]
        assert sorted(logged) == sorted(p.sha256 for p in own)
