"""icl_cli.distributed: one process (every helper a plain call), and 2 gloo ranks."""

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


def test_leave_destroys_the_group_and_is_a_no_op_without_one():
    import torch.distributed as dist

    distributed.leave()  # no group: nothing to do
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    distributed.leave(timeout_s=5)
    assert not dist.is_initialized()


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


def _two_ranks(rank: int, port: int, out: str) -> None:
    """One of 2 gloo ranks (torch.multiprocessing): each helper's outcome, per rank."""
    import json
    import os
    from contextlib import contextmanager

    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    world, _ = distributed.join(torch.device("cpu"))
    seen = {"world": [world.rank, world.size]}
    seen["from_main"] = distributed.from_main(lambda: [rank, "made"],
                                              send=lambda r: r + ["sent"])

    def attempt(fn):
        try:
            fn()
            return None
        except Exception as exc:  # noqa: BLE001 (the outcome is the test's subject)
            return f"{type(exc).__name__}: {exc}"

    seen["agree"] = attempt(lambda: distributed.agree(
        ValueError("boom") if rank == 1 else None))

    @contextmanager
    def busy():
        raise RuntimeError("lock busy")
        yield

    def enter():
        with distributed.main_only(busy):
            pass

    seen["main_only"] = attempt(enter)
    seen["from_main_error"] = attempt(lambda: distributed.from_main(lambda: 1 / 0))
    import time

    if rank == 0:
        time.sleep(1.0)  # still writing its results while rank 1 is done
    t0 = time.monotonic()
    distributed.leave()
    seen["leave_seconds"] = time.monotonic() - t0
    seen["left"] = not torch.distributed.is_initialized()
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(seen, f)


@pytest.mark.slow  # 2 spawned processes: ~30 s on this loaded machine
def test_two_ranks_agree_on_every_outcome(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_ranks, args=(port, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == [0, 2] and r1["world"] == [1, 2]
    assert r0["from_main"] == [0, "made"]  # rank 0 keeps its own result
    assert r1["from_main"] == [0, "made", "sent"]  # the others get send(result)
    assert r1["agree"] == "ValueError: boom"
    assert r0["agree"] == "StepError: rank 1 of 2 failed: boom"
    assert r0["main_only"] == "RuntimeError: lock busy"
    assert r1["main_only"] == "StepError: rank 0 of 2 failed: lock busy"
    assert r0["from_main_error"] == "ZeroDivisionError: division by zero"
    assert r1["from_main_error"] == "StepError: rank 0 of 2 failed: division by zero"
    assert r1["leave_seconds"] >= 0.5 and r0["left"] and r1["left"]  # they left together
