"""Workspace discovery, name checks and crash-safe file writes.

A workspace is a folder holding ``.icl/`` (the catalog, locks, MLflow data) and
``experiments/<name>/`` (shards, checkpoints, figures). Every artefact file is written
through :func:`atomic_write`, so a crash or Ctrl-C leaves either the old file or the
new one, never half of one (at worst a ``*.tmp-*`` leftover that ``icl verify --repair``
removes). A full disk is reported as :class:`DiskFull`, one line naming the folder and
its free space (:func:`no_space` tells one from the errors the writers raise).

Example:
    >>> root = find_workspace()                     # doctest: +SKIP
    >>> atomic_write(root / "x.bin", lambda tmp: tmp.write_bytes(b"data"))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CatalogMissing, CatalogUnusable, NotAWorkspace, OutsideWorkspace, StoreError

ICL_DIR = ".icl"
CATALOG_FILE = "catalog.db"
LOCKS_DIR = "locks"
EXPERIMENTS_DIR = "experiments"
WORKSPACE_FIGURES = "figures"  # <ws>/figures/: figures of several experiments
CARDS = "cards"  # <ws>/cards/<experiment>.md|.json: reproducibility cards (icl report --card)
TMP_MARK = ".tmp-"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FREE_FLOOR = 1 << 20  # below this many free bytes a file system counts as full
_FULL_TEXT = ("no space left on device", "errno = 28", "disk quota exceeded",
              "database or disk is full")


class DiskFull(StoreError):
    """No space left on the workspace's device (ENOSPC, a quota, SQLite's SQLITE_FULL):
    one line naming the folder and its free space. What was finished is recorded, what
    was cut short left at most a ``*.tmp-*`` file: run the command again once there is
    space, and it finishes what was missing."""


def is_workspace(folder: Path) -> bool:
    """True if ``folder`` holds an icl catalog (or the ``.icl/locks`` of one whose
    catalog lives on a database server, see ``ICL_CATALOG_URL``)."""
    icl = folder / ICL_DIR
    return (icl / CATALOG_FILE).is_file() or (icl / LOCKS_DIR).is_dir()


def check_root(root: Path) -> Path:
    """``root`` if icl can name it on one line: a workspace path holding a line break is a
    StoreError (every other printable character works; URLs built from it are escaped)."""
    if any(c in str(root) for c in "\n\r"):
        raise StoreError(f"the workspace path {str(root)!r} holds a line break, which icl "
                         "cannot show on one line: rename the folder without it")
    return root


def leaving_link(root: Path, path: Path) -> tuple[Path, Path] | None:
    """The first link on the way from ``root`` down to ``path`` (``path`` itself included)
    that leads out of ``root``, with where it leads; None when every step stays inside
    (links that stay inside the workspace are fine). A ``path`` not under ``root`` at all
    is its own answer. One ``lstat`` per component; ``realpath`` only for links.

    Example:
        >>> leaving_link(ws, ws / "experiments/icl/shards/round-0001.v1.h5")  # doctest: +SKIP
        (PosixPath('/ws/experiments/icl/shards'), PosixPath('/scratch/shards'))
    """
    top = os.path.realpath(root)
    where = os.path.normpath(os.path.abspath(path))
    for base in (top, os.path.normpath(os.path.abspath(root))):
        if where == base or where.startswith(base + os.sep):
            rest = where[len(base):].split(os.sep)
            break
    else:
        real = os.path.realpath(where)
        return None if _within(real, top) else (Path(where), Path(real))
    step = top
    for part in rest:
        if not part:
            continue
        step = os.path.join(step, part)
        if os.path.islink(step):
            real = os.path.realpath(step)
            if not _within(real, top):
                return Path(step), Path(real)
    return None


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)



def outside(root: Path, link: Path, real: Path, what: str | None = None,
            fix: str | None = None) -> OutsideWorkspace:
    """The one-line refusal of ``link`` (under ``root``), which leads to ``real``, outside
    the workspace; ``what``: the artefact behind it, ``fix``: the command that re-creates
    that artefact once the link is gone."""
    try:
        name = Path(os.path.abspath(link)).relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        name = str(link)
    behind = "" if what is None else f"{what} lies behind a link that leaves the workspace: "
    then = (f", then {fix}" if fix else "")
    return OutsideWorkspace(
        f"{behind}{name} is a link that leaves the workspace (to {real}); icl neither reads "
        "nor writes its own files through such a link: replace it with a folder or file of "
        f"the workspace's own{then} (to keep a workspace on other storage, put the whole "
        "workspace there)")


def contained(root: Path, path: Path, what: str | None = None, fix: str | None = None
              ) -> Path:
    """``path`` (under the workspace ``root``) if writing, deleting or reading it stays
    inside the workspace; else OutsideWorkspace naming the link that leaves it."""
    found = leaving_link(root, path)
    if found is not None:
        raise outside(root, *found, what=what, fix=fix)
    return Path(path)


def find_workspace(explicit: Path | None = None, cwd: Path | None = None) -> Path:
    """The workspace root: ``explicit``, else ``$ICL_WORKSPACE``, else the nearest folder
    at or above ``cwd`` (default: the current directory) that holds ``.icl/catalog.db``.

    Raises NotAWorkspace if the chosen folder (or no parent) is a workspace.
    """
    chosen = explicit if explicit is not None else os.environ.get("ICL_WORKSPACE") or None
    if chosen is not None:
        root = Path(chosen).expanduser().resolve()
        if not is_workspace(root):
            refuse_unrecorded(root, experiments_on_disk(root), set(), "is missing")
            raise NotAWorkspace(
                f"not an icl workspace: {root}; run `icl init -w {root}` or pass another "
                "--workspace"
            )
        return root
    start = Path(cwd if cwd is not None else Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if is_workspace(folder):
            return folder
    refuse_unrecorded(start, experiments_on_disk(start), set(), "is missing")
    raise NotAWorkspace(
        f"not an icl workspace (or any parent): {start}; run `icl init` here or pass --workspace"
    )


SHARD_FILE = re.compile(r"^round-(\d{4,})\.v(\d+)\.h5$")
CHECKPOINT_FILE = re.compile(r"^round-(\d{4,})\.pt$")


def experiments_on_disk(root: Path) -> dict[str, list[Path]]:
    """{experiment: its shard and checkpoint files} for every folder of ``experiments/``
    that holds at least one (temporaries, figures and empty folders do not count, nor
    anything behind a link that leaves the workspace: ``icl verify`` names those links)."""
    out: dict[str, list[Path]] = {}
    if leaving_link(root, Path(root) / EXPERIMENTS_DIR) is not None:
        return out
    for entry in _entries(root / EXPERIMENTS_DIR, dirs=True):
        found = [Path(entry.path, sub, f.name) for sub, pattern in
                 (("shards", SHARD_FILE), ("checkpoints", CHECKPOINT_FILE))
                 if leaving_link(root, Path(entry.path, sub)) is None
                 for f in _entries(Path(entry.path, sub)) if pattern.match(f.name)
                 and not (f.is_symlink() and leaving_link(root, Path(f.path)) is not None)]
        if found:
            out[entry.name] = found
    return out


def _entries(folder: Path, dirs: bool = False) -> list[os.DirEntry]:
    try:
        found = [e for e in os.scandir(folder)
                 if (e.is_dir(follow_symlinks=False) if dirs else e.is_file())]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return sorted(found, key=lambda e: e.name)


def refuse_unrecorded(root: Path, on_disk: dict[str, list[Path]], known: set[str],
                      state: str, catalog: str = ".icl/catalog.db") -> None:
    """CatalogMissing if ``on_disk`` (see :func:`experiments_on_disk`) names experiments
    that are not ``known`` to the catalog, which ``state`` ("is missing", "is empty"...)."""
    lost = sorted(set(on_disk) - known)
    if not lost:
        return
    shown = ", ".join(f"'{n}'" for n in lost[:5]) + (" ..." if len(lost) > 5 else "")
    raise CatalogMissing(
        f"the catalog {catalog} {state}, but experiments/ holds the shards and checkpoints "
        f"of {shown}; nothing was written: run `icl verify --rebuild -w {root}` to record "
        "them again from the files"
    )


def validate_name(name: str, what: str = "experiment name") -> str:
    """Return ``name`` if it is a safe single path component, else raise StoreError.

    Allowed: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, and never ``.`` or ``..`` (so a name can
    not climb out of ``experiments/``).
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise StoreError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def fsync_dir(folder: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (no-op where the OS
    cannot open directories)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path_for(path: Path) -> Path:
    """``<path>.tmp-<pid>-<random>`` in the same folder (same file system, so the final
    ``os.replace`` is atomic); the pid lets ``verify`` tell a live writer from a dead one."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, write_fn: Callable[[Path], object],
                 root: Path | None = None) -> Path:
    """Create ``path`` atomically: ``write_fn(tmp)`` writes a temporary file next to it,
    which is fsynced, renamed over ``path`` and the folder fsynced. ``root``: the workspace
    ``path`` belongs to; a link on the way that leaves it is refused (OutsideWorkspace)
    before anything is made.

    On any exception, KeyboardInterrupt included, the temporary file is removed and the
    exception re-raised; ``path`` is then untouched. Returns ``path``.
    """
    path = Path(path)
    if root is not None:
        contained(root, path)
    if path.is_dir() and not path.is_symlink():
        raise StoreError(f"{path} is a folder where icl keeps a file: move it away, then run "
                         "the command again")
    path.parent.mkdir(parents=True, exist_ok=True)
    full = no_space(path.parent)  # checked first: some writers (HDF5) crash on ENOSPC
    if full is not None:
        raise full
    tmp = tmp_path_for(path)
    try:
        write_fn(tmp)
        if not tmp.is_file():
            raise StoreError(f"writer produced no file for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        full = no_space(path.parent, exc)  # before the temporary frees its space
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def free_bytes(folder: Path) -> int | None:
    """Bytes this process may still write on ``folder``'s file system (root may use the
    reserved blocks too); None where the OS cannot tell."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def says_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or one of its causes says the disk is full."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def no_space(folder: Path | None, exc: BaseException | None = None) -> DiskFull | None:
    """The DiskFull to raise, or None: with ``exc``, if it says the disk is full (ENOSPC
    or a quota anywhere in its causes, SQLite's "database or disk is full"), or it is a
    write failure (OSError, RuntimeError: torch's "file write failed", a catalog that
    cannot be used: SQLite's "disk I/O error") while ``folder`` has under 1 MiB free;
    without, if ``folder`` has under 1 MiB free. ``folder`` None: not known yet."""
    free = free_bytes(folder) if folder is not None else None
    low = free is not None and free < FREE_FLOOR
    if exc is None and not low:
        return None
    if exc is not None and not says_disk_full(exc) and not (
            low and type(exc) in (OSError, RuntimeError, CatalogUnusable)):
        return None
    where = "" if folder is None else f" of {folder}"
    shown = "" if free is None else f" ({free / 1024:.0f} KiB free)"
    return DiskFull(f"no space left on the device{where}{shown}: free some space, then run "
                    "the command again (what was finished is kept, the rest is done then)")


@contextmanager
def disk_full_as_one_line(folder: Path | None) -> Iterator[None]:
    """Turn a failure that :func:`no_space` finds to be a full disk into DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        full = no_space(folder, exc)
        if full is None:
            raise
        raise full from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid: int | None) -> bool:
    """True if a process with this pid exists on this machine (a permission error means it
    exists but belongs to someone else)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
