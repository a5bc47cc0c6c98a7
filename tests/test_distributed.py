"""icl_cli.distributed outside torchrun: one process, every helper a plain call."""

import pytest

from icl_cli import distributed
from icl_cli.errors import StepError


def test_the_world_is_read_from_torchruns_environment():
    assert distributed.from_env({}) == distributed.World(0, 1, 0)
    w = distributed.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.active, w.main) == (3, 4, 1, True, False)
    with pytest.raises(StepError, match="not a valid torchrun world"):
        distributed.from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(StepError, match="must be integers"):
        distributed.from_env({"WORLD_SIZE": "two"})


def test_backend_is_gloo_on_cpu_and_nccl_on_cuda():
    import torch

    assert distributed.backend(torch.device("cpu")) == "gloo"
    assert distributed.backend(torch.device("cuda", 1)) == "nccl"


def test_one_process_runs_everything_itself(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    import torch

    assert distributed.join(torch.device("cpu")) == (distributed.World(), torch.device("cpu"))
    assert distributed.from_main(lambda: 7) == 7
    with distributed.main_only(lambda: _yielding(5)) as value:
        assert value == 5
    distributed.agree(None)
    with pytest.raises(ValueError, match="mine"):
        distributed.agree(ValueError("mine"))


def test_helpers_refuse_to_run_under_torchrun_before_join(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="join"):
        distributed.from_main(lambda: 1)


def test_without_a_rendezvous_address_join_says_to_use_torchrun(monkeypatch):
    import torch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(StepError, match="start the command with torchrun"):
        distributed.join(torch.device("cpu"))


def _yielding(value):
    from contextlib import contextmanager

    @contextmanager
    def cm():
        yield value

    return cm()
