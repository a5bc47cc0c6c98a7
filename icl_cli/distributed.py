"""Steps under ``torchrun``: one process per rank, joined by torch.distributed.

``torchrun --standalone --nproc-per-node N -m icl_cli reclassify --round t`` starts N
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their
environment; ``join`` reads them and opens the process group (gloo on CPU, nccl on CUDA,
one GPU per rank by ``LOCAL_RANK``). Without torchrun the world is one process and every
helper here is a no-op, so the same step code runs both ways.

Before any collective the ranks agree on what they run (``handshake``): each rank states
its command line and what its step resolved it to (workspace, experiment, round,
settings, the hashes of its inputs), and one exchange through torchrun's own key-value
store, with a timeout of its own (``HANDSHAKE_TIMEOUT_S``), compares their digests; a
disagreement is one line on every rank (StepError, exit 3) before anything is recorded.

Writes belong to rank 0: it holds the experiment's lock for the whole step (``main_only``),
records the step, saves the checkpoint and talks to MLflow (``from_main``); the other ranks
train and read. Every rank reaches the same collective calls in the same order, and a
failure on one rank reaches the others as one line (``StepError``) instead of a hang: at
``main_only``'s entry and ``from_main``'s answer by design, inside training through
torch.distributed's own error when a peer's connection drops (``lost_peer``). The long
waits (the other ranks while rank 0 evaluates and writes) run in Python, polling the
collective, so Ctrl-C and SIGTERM stop a waiting rank at once; a rank that ends on an
error or a signal leaves without waiting for the others (``abandon``).

Example (in a step)::

    world = distributed.join(runtime.torch_device(), {"experiment": ..., "round": ...})
    with distributed.main_only(store.lock, exp.name):
        ...  # every rank trains
        info = distributed.from_main(lambda: store.save_checkpoint(...))
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import time
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


def current_is_open() -> bool:
    """Whether this process has joined torchrun's process group (``join``)."""
    return _initialized()


def backend(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def join(device: torch.device,
         identity: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
         ) -> tuple[World, torch.device]:
    """Open torchrun's process group once per process (nothing to do outside torchrun)
    and return the world with this rank's device: ``cuda:LOCAL_RANK`` when ``device`` is a
    CUDA device, ``device`` otherwise. First every rank states ``identity`` (what it is
    about to run: plain JSON values, or a function that gives them, called only when
    there is a handshake to make) and the ranks compare them (``handshake``): a rank
    that disagrees fails every rank in one line before any collective. The standard
    output of ranks other than 0 is discarded from then on (one table, one JSON
    document); errors still reach stderr. A second call (a step inside ``icl run``) finds
    the group open and agreed on."""
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
        # torchrun's key-value store (its agent's, or rank 0's): the handshake goes
        # through it before the group exists, then the group is made on it.
        store, _, _ = next(dist.rendezvous("env://", world.rank, world.size))
        handshake(store, world, (identity() if callable(identity) else identity) or {})
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend(device), store=store, rank=world.rank,
                                world_size=world.size, **kwargs)
        atexit.register(leave)
        if not world.main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    elif current().size != world.size:
        raise StepError("the open process group does not match torchrun's WORLD_SIZE")
    return current(), device


HANDSHAKE_TIMEOUT_S = float(os.environ.get("ICL_HANDSHAKE_TIMEOUT_S", "60"))
"""How long a rank waits for the others to state what they run (``handshake``): they
start together, so only a rank that runs something else (or nothing) keeps it waiting."""
POLL_S = 0.02
"""How often a waiting rank looks whether the others got there (a signal is handled
between two looks)."""
AGREED = ("step", "workspace", "experiment", "round", "settings", "inputs", "command")
"""What ranks must agree on, in the order a disagreement is named."""


def digest(identity: dict[str, Any]) -> str:
    """sha256 of ``identity`` as canonical JSON (keys sorted).

    Example:
        >>> digest({"round": 1, "experiment": "icl"}) == digest({"experiment": "icl",
        ...                                                      "round": 1})
        True
    """
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def handshake(store: Any, world: World, identity: dict[str, Any],
              timeout_s: float | None = None) -> None:
    """Every rank writes its ``identity`` (and its digest) under its own key of ``store``
    (torchrun's key-value store), waits until every rank has (polling, so a signal is
    handled at once; at most ``timeout_s``, default ``HANDSHAKE_TIMEOUT_S``) and compares
    the digests. StepError, on every rank, naming what differs (``AGREED``) and each
    rank's command, or the ranks that never came."""
    import torch.distributed as dist

    timeout_s = HANDSHAKE_TIMEOUT_S if timeout_s is None else timeout_s
    # One namespace per torchrun attempt: a restarted job never reads an earlier one's.
    attempt = (f"icl-handshake/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
               f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    keys = dist.PrefixStore(attempt, store)
    mine = {"digest": digest(identity), "identity": identity}
    keys.set(f"rank-{world.rank}", json.dumps(mine, sort_keys=True, default=str))
    names = [f"rank-{r}" for r in range(world.size)]
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [r for r, k in enumerate(names) if not keys.check([k])]
        if not missing:
            break
        if time.monotonic() > deadline:
            who = ", ".join(map(str, missing))
            raise StepError(
                f"rank{'s' * (len(missing) > 1)} {who} of {world.size} did not state what "
                f"{'they run' if len(missing) > 1 else 'it runs'} within {timeout_s:g} s: "
                "every rank must run the same icl command (nothing was run)")
        time.sleep(POLL_S)
    stated = [json.loads(keys.get(k)) for k in names]
    if len({s["digest"] for s in stated}) > 1:
        raise StepError(disagreement([s["identity"] for s in stated], world.rank))


def disagreement(identities: list[dict[str, Any]], rank: int) -> str:
    """The line for ranks that stated different ``identities`` (one per rank): what
    differs first (``AGREED``), this rank's command and the first other one.

    Example:
        >>> disagreement([{"experiment": "icl", "command": ["reclassify", "-e", "icl"]},
        ...               {"experiment": "base", "command": ["reclassify", "-e", "base"]}],
        ...              0)  # doctest: +NORMALIZE_WHITESPACE
        "torchrun ranks disagree on the experiment ('icl' on rank 0, 'base' on rank 1):
        rank 0 runs `icl reclassify -e icl`, rank 1 `icl reclassify -e base`; every rank
        must run the same icl command on the same workspace and inputs (nothing was run)"
    """
    stated = [*AGREED, *sorted({k for i in identities for k in i} - set(AGREED))]
    keys = [k for k in stated if any(i.get(k) != identities[0].get(k) for i in identities)]
    what = keys[0] if keys else "what to run"
    other = next((r for r, i in enumerate(identities) if i.get(what) != identities[rank]
                  .get(what)), 1 if rank == 0 else 0)

    def shown(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                               default=str)
        text = repr(text) if isinstance(value, str) else text
        return text if len(text) <= 60 else text[:57] + "..."

    def command(r: int) -> str:
        argv = identities[r].get("command") or []
        return "`icl " + " ".join(map(str, argv)) + "`" if argv else "another command"

    values = f" ({shown(identities[rank].get(what))} on rank {rank}, " \
             f"{shown(identities[other].get(what))} on rank {other})" \
        if what not in ("command", "what to run") else ""
    return (f"torchrun ranks disagree on the {what}{values}: rank {rank} runs "
            f"{command(rank)}, rank {other} {command(other)}; every rank must run the same "
            "icl command on the same workspace and inputs (nothing was run)")


LEAVE_TIMEOUT_S = 60
"""How long a rank waits at exit for the others to get there too (``leave``)."""


_abandoned: list[bool] = [False]


def abandon() -> None:
    """This rank ends on an error or a signal: at exit it leaves at once, without waiting
    for the others at ``leave``'s barrier (they may be waiting in a collective of their
    own, or gone; they learn it when their next collective fails)."""
    _abandoned[0] = True


def leave(timeout_s: float = LEAVE_TIMEOUT_S) -> None:
    """Every rank leaves the process group together, then it is destroyed (at exit; ``join``
    registers it). Without the barrier, a rank that finished first (rank 1, while rank 0
    still writes and prints) tore the group down while the other still held it, and the
    group's threads, which outlive ``destroy_process_group`` once DDP has used the group,
    were still running as its interpreter exited: under load such a rank was seen to
    abort (SIGABRT, "terminate called without an active exception") after its work was
    done. A rank that is gone (its step failed, it was killed) is not waited for: the
    barrier fails, at once or after ``timeout_s`` (gloo), and the group is destroyed. A
    rank that ends on an error or a signal (``abandon``) waits for nobody."""
    if not _initialized() or _abandoned[0]:
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


def finish() -> None:
    """A rank whose command succeeded ends here (outside torchrun: nothing): it leaves with
    the others (``leave``), runs what was registered to run at exit, and ends the process
    at once, without the interpreter's teardown.

    The teardown is what must be skipped. DistributedDataParallel keeps its process group
    alive past ``destroy_process_group`` (torch 2.14: a gloo group's worker threads still
    run after the destroy and a garbage collection, once a network was wrapped in DDP). A
    worker thread releases a finished all-reduce's tensors when it gets to it, which on a
    loaded machine can be after the main thread has passed the last barrier; if the
    interpreter is finalizing by then, the thread's decref of a tensor's Python object
    cannot take the GIL, the thread is made to exit, and a C++ frame that may not unwind
    turns that into std::terminate: SIGABRT, "terminate called without an active
    exception", on rank 0 or 1, after the command's work was done and recorded (a core
    dump shows exactly this stack; about once in 100 launches under load). torchrun then
    reports the command failed."""
    if not _initialized():
        return
    leave()
    atexit._run_exitfuncs()  # what libraries registered (MLflow's): while the interpreter is whole
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _wait(work: Any) -> None:
    """Wait for an asynchronous collective in Python, looking every ``POLL_S``: a rank
    waiting minutes (while rank 0 evaluates) still handles Ctrl-C and SIGTERM at once,
    where a blocking call would hold the signal until the collective ends."""
    while not work.is_completed():
        time.sleep(POLL_S)
    work.wait()  # the collective's own error, if it failed


def _barrier() -> None:
    """A barrier of every rank, waited for in Python (``_wait``)."""
    import torch.distributed as dist

    try:
        _wait(dist.barrier(async_op=True))
    except RuntimeError as exc:
        raise lost_peer(exc) from None


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
    _barrier()  # the long wait (rank 0 taking the lock, starting its step), in Python
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

    _barrier()
    box: list[Any] = [None]
    error, result = None, None
    if world.main:
        try:
            result = fn()
            box[0] = ("ok", result if send is None else send(result))
        except Exception as exc:
            error, box[0] = exc, ("error", _first_line(exc))
    _barrier()  # the others wait here while rank 0 works: in Python, signals handled
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
