"""``icl verify``: check the workspace against its catalog, optionally repair.

Checked: every shard and checkpoint row (file exists, sha256 matches), leftover
temporaries (``*.tmp-*`` under ``experiments/``, from a write that was killed), orphans
(shard/checkpoint files no row names) and stale ``running`` steps (process gone).
``repair=True`` deletes temporaries whose writer is dead and marks stale steps
interrupted; it never deletes orphans or anything the catalog references.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import update

from .artifacts import checkpoint_fix, shard_fix
from .catalog import Step, run_write, utcnow
from .errors import IntegrityError
from .infos import VerifyReport
from .workspace import EXPERIMENTS_DIR, TMP_MARK, pid_alive

if TYPE_CHECKING:
    from .store import Store


def _writer_alive(tmp: Path) -> bool:
    """True if the pid in ``<name>.tmp-<pid>-<random>`` is another live process."""
    try:
        pid = int(tmp.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and pid_alive(pid)


def verify(store: Store, repair: bool = False) -> VerifyReport:
    """Return a :class:`VerifyReport` for ``store`` (see the module docstring)."""
    problems: list[str] = []
    repaired: list[str] = []
    referenced: set[str] = set()
    for exp in store.experiments():
        for sh in store.shards(exp.name):
            referenced.add(store.rel(sh.path))
            _check(store, sh.path, sh.sha256, "shard", shard_fix(exp.name, sh.round), problems)
        for ck in store.checkpoints(exp.name):
            referenced.add(store.rel(ck.path))
            fix = checkpoint_fix(exp.name, ck.round)
            _check(store, ck.path, ck.sha256, "checkpoint", fix, problems)

    base = store.root / EXPERIMENTS_DIR
    temporary: list[Path] = []
    for tmp in sorted(base.rglob(f"*{TMP_MARK}*")) if base.is_dir() else []:
        if not tmp.is_file():
            continue
        if repair and not _writer_alive(tmp):
            tmp.unlink(missing_ok=True)
            repaired.append(f"removed leftover temporary {store.rel(tmp)}")
        else:
            temporary.append(tmp)

    files = [*base.glob("*/shards/*.h5"), *base.glob("*/checkpoints/*.pt")] if base.is_dir() else []
    orphans = sorted(p for p in files if store.rel(p) not in referenced)

    stale = [s for s in store.steps() if s.state == "interrupted" and s.finished_at is None]
    for s in stale:
        what = f"`{s.name}{'' if s.round is None else f' --round {s.round}'}`"
        if repair:
            _mark_interrupted(store, s.id)
            repaired.append(f"marked step {what} of '{s.experiment}' (pid {s.pid}) interrupted")
        else:
            problems.append(
                f"step {what} of experiment '{s.experiment}' (pid {s.pid}) died while running; "
                "run `icl verify --repair` to mark it interrupted"
            )
    # A temporary file that a live icl process is writing right now is work in progress,
    # not an inconsistency: it is listed, but only a dead writer's leftover fails the check.
    leftovers = [t for t in temporary if not _writer_alive(t)]
    return VerifyReport(
        problems=problems,
        temporary=temporary,
        orphans=orphans,
        ok=not problems and not leftovers,
        repaired=repaired,
    )


def _check(store: Store, path: Path, sha: str, what: str, fix: str, problems: list[str]) -> None:
    try:
        store._check_file(path, sha, f"{what} {store.rel(path)}", fix)
    except IntegrityError as exc:
        problems.append(str(exc))


def _mark_interrupted(store: Store, step_id: int | None) -> None:
    def mark(s) -> None:
        s.execute(
            update(Step)
            .where(Step.id == step_id, Step.state == "running")
            .values(
                state="interrupted",
                finished_at=utcnow(),
                message="process ended without finishing (marked by `icl verify --repair`)",
            )
        )

    run_write(store.engine, mark)
