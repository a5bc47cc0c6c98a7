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
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .catalog import Catalog, Experiment, Step, to_info, utcnow
from .hashing import config_hash
from .infos import StepInfo
from .locking import Locks
from .workspace import pid_alive


class StepLog:
    """Step rows of ``catalog``; ``locks`` tells a live step from a dead one."""

    def __init__(self, catalog: Catalog, locks: Locks) -> None:
        self.catalog, self.locks = catalog, locks

    def start(self, experiment: str, name: str, round: int | None,
              config: dict[str, Any]) -> StepInfo:
        """Add a ``running`` row (the caller holds the experiment's lock), marking any other
        ``running`` row of the experiment interrupted: its process died."""
        digest = config_hash(config)

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
                       config_hash=digest, state="running", pid=os.getpid(), host=here)
            s.add(row)
            s.flush()
            return self._info(row, experiment, "running")

        return self.catalog.write(start)

    def finish(self, step_id: int, state: str, message: str | None, seconds: float) -> None:
        """Mark step ``step_id`` ok, failed or interrupted after ``seconds``."""
        def finish(s: Session) -> None:
            row = s.get(Step, step_id)
            row.state, row.message = state, message
            row.finished_at, row.seconds = utcnow(), seconds

        self.catalog.write(finish)

    def mark_interrupted(self, step_id: int | None, message: str) -> None:
        """Mark a ``running`` row interrupted (a row that ended meanwhile is left alone)."""
        def mark(s: Session) -> None:
            s.execute(update(Step).where(Step.id == step_id, Step.state == "running")
                      .values(state="interrupted", finished_at=utcnow(), message=message))

        self.catalog.write(mark)

    def steps(self, experiment: str | None = None, name: str | None = None,
              round: int | None = None) -> list[StepInfo]:
        """Step log, oldest first, optionally filtered; stale ``running`` rows read as
        ``interrupted``."""
        q = select(Step, Experiment.name).join(Experiment)
        if experiment is not None:
            q = q.where(Experiment.name == self.catalog.experiment(experiment).name)
        if name is not None:
            q = q.where(Step.name == name)
        if round is not None:
            q = q.where(Step.round == round)
        with self.catalog.read() as s:
            rows = s.execute(q.order_by(Step.started_at, Step.id)).all()
            return [self._info(r, e, "interrupted" if self._stale(r, e) else r.state)
                    for r, e in rows]

    def _stale(self, row: Step, exp: str) -> bool:
        """A ``running`` row whose process is gone. A live step always holds the lock, so
        a free lock means stale even if the pid was reused."""
        if row.state != "running":
            return False
        here = row.host in (None, socket.gethostname())
        if here and row.pid == os.getpid():
            return False
        if here and not pid_alive(row.pid):
            return True
        return not self.locks.held_elsewhere(exp)

    @staticmethod
    def _info(row: Step, exp: str, state: str) -> StepInfo:
        return to_info(StepInfo, row, experiment=exp, state=state)
