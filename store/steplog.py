"""The step log part of a store: one catalog row per run of a step, and how it ended.

A row is ``running`` from the step's start until it finishes ``ok``, ``failed`` or
``interrupted``; a ``running`` row whose process is gone (SIGKILL, power cut) reads as
``interrupted``, and the next step of that experiment, or ``icl verify --repair``, marks it
so. ``Store.step`` ties this log to the experiment lock and the MLflow run.

Example:
    >>> log = StepLog(catalog, locks)                                    # doctest: +SKIP
    >>> info = log.start("icl", "synthesize", 1, {"count": 20})
    >>> log.finish(info.id, "ok", None, seconds=3.2)
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .hashing import config_hash
from .infos import StepInfo, to_info
from .locking import Locks
from .schema import utcnow
from .workspace import pid_alive

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .orm import Step


Describe = Callable[[dict[str, Any]], dict[str, Any]]
_describe: list[Describe] = []  # the one describer of this process, if any


def describe_steps_with(describe: Describe | None) -> None:
    """Record with every step this process starts from now on ``describe(config)``: where
    the step runs (its device and that device's CPU or GPU model, versions, determinism
    settings), a plain JSON dict kept in the row's ``environment``. The steps' layer gives
    it (``icl_cli.steps.common``), as the store knows neither torch nor devices; None: no
    description (the column stays NULL, as for steps recorded before schema 6)."""
    _describe[:] = [] if describe is None else [describe]


def describe_step(config: dict[str, Any]) -> dict[str, Any] | None:
    """What the describer says of a step with ``config``; None without one, or when it
    fails (a description never fails a step)."""
    if not _describe:
        return None
    try:
        return dict(_describe[0](config))
    except Exception as exc:
        print(f"warning: the step's environment was not recorded ({type(exc).__name__}: "
              f"{exc})", file=sys.stderr)
        return None


class StepLog:
    """Step rows of ``catalog``; ``locks`` tells a live step from a dead one."""

    def __init__(self, catalog: Catalog, locks: Locks) -> None:
        self.catalog, self.locks = catalog, locks

    def start(self, experiment: str, name: str, round: int | None,
              config: dict[str, Any]) -> StepInfo:
        """Add a ``running`` row (the caller holds the experiment's lock), marking any other
        ``running`` row of the experiment interrupted: its process died."""
        from sqlalchemy import select

        from .orm import Step

        digest = config_hash(config)
        environment = describe_step(config)

        def start(s: Session) -> StepInfo:
            exp_id = self.catalog.row(s, experiment).id
            # We hold the lock, and a live step always does: any other ``running`` row
            # of this experiment is a process that died (SIGKILL, power cut).
            here = socket.gethostname()
            for dead in s.scalars(
                select(Step).where(Step.experiment_id == exp_id, Step.state == "running")
            ):
                if dead.pid == os.getpid() and dead.host in (None, here):
                    continue  # a step of this very process further up the stack
                dead.state, dead.finished_at = "interrupted", utcnow()
                dead.message = "process ended without finishing (found by the next step)"
            row = Step(experiment_id=exp_id, name=name, round=round, config=config,
                       config_hash=digest, state="running", pid=os.getpid(), host=here,
                       environment=environment)
            s.add(row)
            s.flush()
            return self._info(row, experiment, "running")

        return self.catalog.write(start)

    def finish(self, step_id: int, state: str, message: str | None, seconds: float) -> None:
        """Mark step ``step_id`` ok, failed or interrupted after ``seconds``."""
        from .orm import Step

        def finish(s: Session) -> None:
            row = s.get(Step, step_id)
            row.state, row.message = state, message
            row.finished_at, row.seconds = utcnow(), seconds

        self.catalog.write(finish)

    def mark_interrupted(self, step_id: int | None, message: str) -> None:
        """Mark a ``running`` row interrupted (a row that ended meanwhile is left alone)."""
        from sqlalchemy import update

        from .orm import Step

        def mark(s: Session) -> None:
            s.execute(update(Step).where(Step.id == step_id, Step.state == "running")
                      .values(state="interrupted", finished_at=utcnow(), message=message))

        self.catalog.write(mark)

    def steps(self, experiment: str | None = None, name: str | None = None,
              round: int | None = None, last: int | None = None,
              state: str | None = None) -> list[StepInfo]:
        """Step log, oldest first, optionally filtered; stale ``running`` rows read as
        ``interrupted``. ``last``: only the newest N rows (``steps()[-N:]`` without reading
        the whole log); ``state``: only rows that read so (e.g. "running": running now)."""
        exp = None if experiment is None else self.catalog.experiment(experiment).name
        # A row reads "interrupted" when it says so, or when it says "running" and is stale.
        stored = None if state is None else \
            ("interrupted", "running") if state == "interrupted" else (state,)
        rows = self.catalog.reader.steps(exp, name, round, stored,
                                         last=last if state is None else None)
        found = [replace(info, state="interrupted") if self._stale(info, host) else info
                 for info, host in rows]
        if state is None:
            return found
        found = [s for s in found if s.state == state]
        return found if last is None else found[max(0, len(found) - max(0, last)):]

    def _stale(self, row: StepInfo, host: str | None) -> bool:
        """A ``running`` row whose process is gone. A live step always holds the lock, so
        a free lock means stale even if the pid was reused."""
        if row.state != "running":
            return False
        here = host in (None, socket.gethostname())
        if here and row.pid == os.getpid():
            return False
        if here and not pid_alive(row.pid):
            return True
        return not self.locks.held_elsewhere(row.experiment)

    @staticmethod
    def _info(row: Step, exp: str, state: str) -> StepInfo:
        return to_info(StepInfo, row, experiment=exp, state=state)
