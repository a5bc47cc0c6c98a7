"""``icl verify``: check the workspace against its catalog, optionally repair.

Checked: every shard and checkpoint row (file exists, sha256 matches), leftover
temporaries (``<name>.tmp-<pid>-<8 hex>`` in an experiment's shards/, checkpoints/ or
figures/ folder, or in .icl/, .icl/data/, .icl/references/, figures/ or cards/: exactly
what icl writes, from a write that was killed), orphans
(shard/checkpoint files no row names) and stale ``running`` steps (process gone).
``repair=True`` deletes temporaries whose writer is dead and marks stale steps
interrupted; it never deletes orphans, anything the catalog references, or any file not
named as icl names its temporaries. Rounds downstream of a replaced shard or checkpoint are
listed as stale (``icl run`` redoes them).

It reads through the store's public parts only: :class:`~store.artifacts.ArtifactFiles`
(rows, ``check_file``, stale rounds) and :class:`~store.steplog.StepLog`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from .artifacts import ArtifactFiles, checkpoint_fix, shard_fix
from .datacache import DATA_DIR
from .errors import IntegrityError
from .infos import VerifyReport
from .references import REFERENCES_DIR
from .shards import PART_FILE
from .steplog import StepLog
from .workspace import (
    CARDS,
    EXPERIMENTS_DIR,
    ICL_DIR,
    LOCKS_DIR,
    TMP_MARK,
    WORKSPACE_FIGURES,
    leaving_link,
    outside,
    pid_alive,
    sha256_file,
)

# Exactly what ``workspace.tmp_path_for`` writes: <name>.tmp-<pid>-<8 hex digits>.
_TMP_NAME = re.compile(rf"^.+{re.escape(TMP_MARK)}(\d+)-[0-9a-f]{{8}}$")
_TMP_DIRS = ("shards", "checkpoints", "figures")  # where icl writes into experiments/<name>/
# ... and beside them: the workspace's id (.icl), decoded data, reference nets, the figures
# of several experiments, the cards.
_TOP_DIRS = ((ICL_DIR,), (ICL_DIR, DATA_DIR), (ICL_DIR, REFERENCES_DIR),
             (WORKSPACE_FIGURES,), (CARDS,))


def _is_icl_temporary(path: Path, root: Path) -> bool:
    """A temporary icl itself made: its exact name pattern, in a folder icl writes to.
    Anything else (a user's ``notes.tmp-old``) is never listed or removed."""
    folder = path.relative_to(root).parts[:-1]
    ours = (folder in _TOP_DIRS or (len(folder) >= 3 and folder[0] == EXPERIMENTS_DIR
                                    and folder[2] in _TMP_DIRS
                                    and (len(folder) == 3 or folder[2] == "figures")))
    return (ours and path.is_file() and not path.is_symlink()
            and _TMP_NAME.match(path.name) is not None)


def _temporaries(root: Path) -> list[Path]:
    """Every temporary icl made in the workspace (see ``_is_icl_temporary``), none behind
    a link that leaves it."""
    found = set()
    for top in [(EXPERIMENTS_DIR,), *_TOP_DIRS]:
        folder = root.joinpath(*top)
        if leaving_link(root, folder) is not None or not folder.is_dir():
            continue
        files = folder.rglob(f"*{TMP_MARK}*") if top == (EXPERIMENTS_DIR,) else \
            folder.glob(f"*{TMP_MARK}*")
        found |= {p for p in files if _is_icl_temporary(p, root)}
    return sorted(found)


def _writer_alive(tmp: Path) -> bool:
    """True if the pid in ``<name>.tmp-<pid>-<random>`` is another live process."""
    m = _TMP_NAME.match(tmp.name)
    if m is None:
        return False
    pid = int(m.group(1))
    return pid != os.getpid() and pid_alive(pid)


def verify(files: ArtifactFiles, log: StepLog, repair: bool = False) -> VerifyReport:
    """Return a :class:`VerifyReport` for the workspace of ``files`` and ``log`` (see the
    module docstring)."""
    experiments = files.catalog.experiments()
    problems: list[str] = []
    repaired: list[str] = []
    recorded = [(sh.path, sh.sha256, "shard", shard_fix(exp.name, sh.round))
                for exp in experiments for sh in files.shards(exp.name)]
    recorded += [(ck.path, ck.sha256, "checkpoint", checkpoint_fix(exp.name, ck.round))
                 for exp in experiments for ck in files.checkpoints(exp.name)]
    referenced = {files.rel(path) for path, *_ in recorded}
    links = _links_out(files.root, {files.rel(path): fix for path, _, _, fix in recorded})
    problems += [line for _, line in links]
    for path, sha, what, fix in recorded:
        found = leaving_link(files.root, path)
        if found is None or found[0] not in {link for link, _ in links}:
            _check(files, path, sha, what, fix, problems)

    base = files.root / EXPERIMENTS_DIR
    inside = leaving_link(files.root, base) is None
    temporary: list[Path] = []
    for tmp in _temporaries(files.root):
        if repair and not _writer_alive(tmp):
            tmp.unlink(missing_ok=True)
            repaired.append(f"removed leftover temporary {files.rel(tmp)}")
        else:
            temporary.append(tmp)

    on_disk = [p for p in ([*base.glob("*/shards/*.h5"), *base.glob("*/checkpoints/*.pt")]
                           if inside and base.is_dir() else [])
               if leaving_link(files.root, p) is None]  # a link out: named above
    # A part file (``--part i/N``) waits for the round's other parts: not an orphan.
    steps = log.steps()
    parts, obsolete = _parts(files, steps, sorted(p for p in on_disk if PART_FILE.match(p.name)),
                             problems)
    orphans = sorted(p for p in on_disk
                     if files.rel(p) not in referenced and not PART_FILE.match(p.name))

    dead = [s for s in steps if s.state == "interrupted" and s.finished_at is None]
    for s in dead:
        what = f"`{s.name}{'' if s.round is None else f' --round {s.round}'}`"
        if repair:
            log.mark_interrupted(s.id, "process ended without finishing (marked by "
                                       "`icl verify --repair`)")
            repaired.append(f"marked step {what} of '{s.experiment}' (pid {s.pid}) interrupted")
        else:
            problems.append(
                f"step {what} of experiment '{s.experiment}' (pid {s.pid}) died while running; "
                "run `icl verify --repair` to mark it interrupted"
            )
    # A temporary file that a live icl process is writing right now is work in progress,
    # not an inconsistency: it is listed, but only a dead writer's leftover fails the check.
    leftovers = [t for t in temporary if not _writer_alive(t)]
    stale = [f"round {t} of '{exp.name}': {why}" for exp in experiments
             for t, why in sorted(files.stale_rounds(exp.name).items())]
    return VerifyReport(
        problems=problems,
        temporary=temporary,
        orphans=orphans,
        ok=not problems and not leftovers,
        parts=parts,
        repaired=repaired,
        stale=stale,
        obsolete=obsolete,
    )


def join_command(part: Path) -> str:
    """The command that joins the parts of the round a part file belongs to, e.g.
    ``icl synthesize --round 7 --merge -e icl`` (``part``: ``.../<exp>/shards/<part>``)."""
    m = PART_FILE.match(part.name)
    return f"icl synthesize --round {int(m.group(1))} --merge -e {part.parent.parent.name}"


def _parts(files: ArtifactFiles, steps: list, on_disk: list[Path], problems: list[str]
           ) -> tuple[list[Path], list[str]]:
    """(the part files waiting for the rest of their round, a line for each obsolete one)
    of ``on_disk``; a part that fails the sha256 its step record holds is a problem. A part
    is obsolete once its round has a shard of its version or later (drawn whole, or joined
    from other parts: it is never joined), or once its part of the same set was drawn
    again into another file. A part's record is the newest step whose config names its
    ``path`` with a ``sha256`` and its ``part`` [i, N] (``synthesize-part`` steps)."""
    records: dict[str, object] = {}
    newest: dict[tuple, str] = {}
    for s in steps:  # oldest first: the last record of a file, and of a part, wins
        c = s.config or {}
        if s.state == "ok" and isinstance(c.get("path"), str) and c.get("sha256") \
                and isinstance(c.get("part"), list):
            records[c["path"]] = c
            newest[_part_of_set(s.experiment, s.round, c)] = c["path"]
    shards: dict[tuple[str, int], int] = {}
    waiting, obsolete = [], []
    for path in on_disk:
        exp, rel = path.parent.parent.name, files.rel(path)
        t, v, i, n = (int(g) for g in PART_FILE.match(path.name).groups()[:4])
        if (exp, t) not in shards:
            shards[exp, t] = max((sh.version for sh in files.shards(exp, t)), default=0)
        c = records.get(rel)
        again = None if c is None else newest.get(_part_of_set(exp, t, c))
        if shards[exp, t] >= v:
            obsolete.append(f"{path}: round {t} has shard v{shards[exp, t]} now (drawn whole, "
                            "or joined from other parts), so this part is never joined; "
                            f"delete it: `rm {shlex.quote(str(path))}`")
        elif again not in (None, rel):
            obsolete.append(f"{path}: part {i}/{n} of round {t} of '{exp}' was drawn again "
                            f"into {files.root / again}; delete this one: "
                            f"`rm {shlex.quote(str(path))}`")
        elif c is not None and (got := sha256_file(path)) != c["sha256"]:
            problems.append(f"part {i}/{n} of round {t} of '{exp}' ({rel}) failed its sha256 "
                            f"check (expected {c['sha256'][:12]}.., got {got[:12]}..): draw "
                            f"it again with `icl synthesize --round {t} --part {i}/{n} -e {exp}`"
                            " (with the sampler options it was drawn with, if any)")
        else:
            waiting.append(path)
    return waiting, obsolete


def _part_of_set(experiment: str, round: int | None, c: dict) -> tuple:
    """Which part of which set a step record is of: experiment, round, the set's plan
    (version, seed, sampler, source, count) and [i, N]."""
    plan = json.dumps(c.get("plan"), sort_keys=True, default=str)
    return experiment, round, plan, tuple(c["part"])


def _links_out(root: Path, fixes: dict[str, str]) -> list[tuple[Path, str]]:
    """(link, problem line) for every link where icl keeps its own files (``.icl/``, its
    catalog, locks, MLflow data and reference nets; ``experiments/``, each experiment's
    folders and every file in them) that leads out of the workspace. ``fixes``: the
    command that re-creates a recorded file, by its workspace-relative path."""
    found: list[tuple[Path, str]] = []

    def look(path: Path, depth: int) -> None:
        """Report ``path`` if it is a link that leaves; descend ``depth`` more levels into
        a folder that is not a link."""
        if os.path.islink(path):
            real = Path(os.path.realpath(path))
            if real != root and root not in real.parents:
                rel = path.relative_to(root).as_posix()
                found.append((path, str(outside(root, path, real, fix=fixes.get(rel)))))
            return
        if depth and path.is_dir():
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                look(Path(entry.path), depth - 1)

    icl = root / ICL_DIR
    look(icl, 0)
    if leaving_link(root, icl) is None:
        for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "mlflow.db",
                     "mlartifacts"):
            look(icl / name, 0)
        for name in (LOCKS_DIR, REFERENCES_DIR):
            look(icl / name, 1)
    base = root / EXPERIMENTS_DIR
    look(base, 0)
    if leaving_link(root, base) is None and base.is_dir():
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            look(Path(entry.path), 0)
            if not entry.is_symlink() and entry.is_dir():
                for sub in _TMP_DIRS:
                    look(Path(entry.path, sub), 8)
    return found


def _check(files: ArtifactFiles, path: Path, sha: str, what: str, fix: str,
           problems: list[str]) -> None:
    try:
        files.check_file(path, sha, f"{what} {files.rel(path)}", fix)
    except IntegrityError as exc:
        problems.append(str(exc))
