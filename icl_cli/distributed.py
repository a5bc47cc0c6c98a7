"""Steps under ``torchrun``: one process per rank, joined by torch.distributed.

``torchrun --standalone --nproc-per-node N -m icl_cli reclassify --round t`` starts N
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their
environment; ``join`` reads them and opens the process group (gloo on CPU, nccl on CUDA,
one GPU per rank by ``LOCAL_RANK``). Without torchrun the world is one process and every
helper here is a no-op, so the same step code runs both ways.

Writes belong to rank 0: it holds the experiment's lock for the whole step (``main_only``),
records the step, saves the checkpoint and talks to MLflow (``from_main``); the other ranks
train and read. Every rank reaches the same collective calls in the same order, and a
failure on one rank reaches the others as one line (``StepError``) instead of a hang: at
``main_only``'s entry and ``from_main``'s answer by design, inside training through
torch.distributed's own error when a peer's connection drops (``lost_peer``).

Example (in a step)::

    world = distributed.join(runtime.torch_device())
    with distributed.main_only(store.lock, exp.name):
        ...  # every rank trains
        info = distributed.from_main(lambda: store.save_checkpoint(...))
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from icl_cli.errors import StepError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun job (rank 0 of 1 without it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one rank: collectives are needed."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0


def from_env(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise StepError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by "
                        "torchrun)") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise StepError(f"RANK {rank} / WORLD_SIZE {size} is not a valid torchrun world")
    return World(rank, size, local)


def current() -> World:
    """The world of the open process group, or one process when there is none (refused
    under torchrun before ``join``: every rank would act as rank 0)."""
    if not _initialized():
        if from_env().active:
            raise RuntimeError("icl_cli.distributed: call join() before the other helpers "
                               "under torchrun")
        return World()
    import torch.distributed as dist

    return World(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def backend(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def join(device: torch.device) -> tuple[World, torch.device]:
    """Open torchrun's process group once per process (nothing to do outside torchrun)
    and return the world with this rank's device: ``cuda:LOCAL_RANK`` when ``device`` is a
    CUDA device, ``device`` otherwise. The standard output of ranks other than 0 is
    discarded from then on (one table, one JSON document); errors still reach stderr."""
    world = from_env()
    if not world.active:
        return world, device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise StepError(f"LOCAL_RANK {world.local_rank} needs GPU {world.local_rank}, "
                            f"this machine has {torch.cuda.device_count()}")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not _initialized():
        import torch.distributed as dist

        if "MASTER_ADDR" not in os.environ:
            raise StepError(f"WORLD_SIZE is {world.size} but no rendezvous address is set: "
                            "start the command with torchrun")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend(device), **kwargs)
        atexit.register(leave)
        if not world.main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    elif current().size != world.size:
        raise StepError("the open process group does not match torchrun's WORLD_SIZE")
    return current(), device


LEAVE_TIMEOUT_S = 60
"""How long a rank waits at exit for the others to get there too (``leave``)."""


def leave(timeout_s: float = LEAVE_TIMEOUT_S) -> None:
    """Every rank leaves the process group together, then it is destroyed (at exit; ``join``
    registers it). Without the barrier, a rank that finished first (rank 1, while rank 0
    still writes and prints) tore the group down while the other still held it, and the
    group's threads, which outlive ``destroy_process_group`` once DDP has used the group,
    were still running as its interpreter exited: under load such a rank was seen to
    abort (SIGABRT, "terminate called without an active exception") after its work was
    done. A rank that is gone (its step failed, it was killed) is not waited for: the
    barrier fails, at once or after ``timeout_s`` (gloo), and the group is destroyed."""
    if not _initialized():
        return
    import datetime

    import torch.distributed as dist

    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except Exception:  # a rank is gone: nothing left to wait for
        pass
    dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def agree(error: BaseException | None) -> None:
    """Every rank calls this at the same point with what went wrong on it (None: nothing);
    if anything did, every rank raises: its own error, or a StepError naming the first
    rank that failed and its message. One process: raise ``error`` if any."""
    world = current()
    if not world.active:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    notes: list[str | None] = [None] * world.size
    try:
        dist.all_gather_object(notes, None if error is None else _first_line(error))
    except RuntimeError as exc:
        raise lost_peer(exc) from None
    if error is not None:
        raise error
    for rank, note in enumerate(notes):
        if note is not None:
            raise StepError(f"rank {rank} of {world.size} failed: {note}")


@contextmanager
def main_only(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Enter ``factory(*args, **kwargs)`` (a context manager: the lock, a step record) on
    rank 0 alone; every rank waits for it, and if rank 0 could not enter it (the lock is
    busy) every rank fails with that line. Yields what rank 0's context gave (None on the
    other ranks)."""
    world = current()
    with ExitStack() as stack:
        error, value = None, None
        try:
            value = stack.enter_context(
                factory(*args, **kwargs) if world.main else nullcontext())
        except Exception as exc:
            error = exc
        agree(error)
        yield value


def from_main(fn: Callable[[], T], send: Callable[[T], Any] | None = None) -> T:
    """Run ``fn`` on rank 0 after every rank got here (a barrier) and hand its result to
    every rank; an error on rank 0 is raised there as itself and on the others as one
    line. Rank 0 returns ``fn``'s result itself, the others a copy of ``send(result)``
    (default: the result), which must pickle (a dataclass of plain values; ``send`` can
    drop what does not, a Store for instance)."""
    world = current()
    if not world.active:
        return fn()
    import torch.distributed as dist

    try:
        dist.barrier()
    except RuntimeError as exc:
        raise lost_peer(exc) from None
    box: list[Any] = [None]
    error, result = None, None
    if world.main:
        try:
            result = fn()
            box[0] = ("ok", result if send is None else send(result))
        except Exception as exc:
            error, box[0] = exc, ("error", _first_line(exc))
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as exc:
        raise lost_peer(exc) from None
    if error is not None:
        raise error
    if world.main:
        return result
    kind, payload = box[0]
    if kind == "error":
        raise StepError(f"rank 0 of {world.size} failed: {payload}")
    return payload


def lost_peer(exc: BaseException) -> StepError:
    """The one line for a collective that failed because another rank is gone (it raised,
    was killed, or its machine dropped out)."""
    world = current()
    text = str(exc)
    why = next((s for s in _PEER_GONE if s.lower() in text.lower()), type(exc).__name__)
    return StepError(f"rank {world.rank} of {world.size}: another rank stopped during the "
                     f"step ({why.lower()}); nothing was saved")


_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "Timed out", "NCCL communicator was aborted")


def is_collective_error(exc: BaseException) -> bool:
    """A torch.distributed failure (a peer gone, a timeout), as opposed to a bug."""
    dist_error = getattr(torch.distributed, "DistError", None)
    return bool(dist_error and isinstance(exc, dist_error)) or (
        isinstance(exc, RuntimeError) and any(
            s.lower() in str(exc).lower() for s in (*_PEER_GONE, "gloo", "NCCL")))
