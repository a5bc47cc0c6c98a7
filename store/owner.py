"""Which workspace a catalog serves: one catalog, one workspace.

A catalog that is not the workspace's own ``.icl/catalog.db`` (``ICL_CATALOG_URL``: a
PostgreSQL database, or a SQLite file elsewhere) could be given to two workspaces, which
would then read and overwrite each other's records. So the workspace holds a random id in
``.icl/workspace-id``, and the catalog holds that id with every folder the workspace was
seen at (``workspace_places``, schema 5). Opening such a catalog:

- with no place recorded (a new catalog, or one upgraded from schema 4): this workspace
  claims it (its id made first, if it has none);
- from a recorded place, with the catalog's id: go on (one query);
- with another id, or none: refused, the catalog belongs to another workspace;
- with the catalog's id from an unrecorded folder: when a recorded place still holds a
  workspace of that id (another folder, not this one under another name), this one is a
  copy (``cp -a``) and refused until it has a catalog of its own; else it was moved (or is
  the same shared folder seen from another machine), and ``icl verify --adopt`` records
  the new place once. A catalog that is itself a copy (another database: ``CREATE DATABASE
  ... TEMPLATE``, a file copied elsewhere) serves the copy of the workspace that opens it.

The workspace's own SQLite catalog lives and moves with its folder: nothing of this runs
for it (no id, no query, nothing imported).

Example:
    >>> bind(store)                       # server catalog: claim, check or refuse # doctest: +SKIP
    >>> bind(store, adopt=True)           # a moved workspace records its new place
    ["this workspace now serves the catalog from /new/ws (it was at /old/ws)"]
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CatalogOfAnotherWorkspace, display_url
from .workspace import ICL_DIR, atomic_write, contained

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


ID_FILE = "workspace-id"
"""``.icl/workspace-id``: the workspace's random id (32 hex digits and a newline)."""


def workspace_id(root: Path) -> str | None:
    """The id in ``<root>/.icl/workspace-id``, or None where there is none (yet)."""
    try:
        text = (Path(root) / ICL_DIR / ID_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def make_workspace_id(root: Path) -> str:
    """The workspace's id, made (a random one, written atomically) when it has none. Two
    processes making it at once agree: the second to link its file in reads the first's."""
    found = workspace_id(root)
    if found is not None:
        return found
    path = contained(root, Path(root) / ICL_DIR / ID_FILE)
    fresh = path.with_name(f"{ID_FILE}.new-{os.getpid()}-{secrets.token_hex(4)}")
    atomic_write(fresh, lambda tmp: tmp.write_text(secrets.token_hex(16) + "\n"), root=root)
    try:
        os.link(fresh, path)  # fails if another process made it meanwhile
    except FileExistsError:
        pass
    finally:
        fresh.unlink(missing_ok=True)
    return workspace_id(root) or ""


def _holds(folder: str, wid: str) -> bool:
    """True if ``folder`` is (on this machine) a workspace whose id is ``wid``."""
    return workspace_id(Path(folder)) == wid


def _same_folder(a: str, b: Path) -> bool:
    """True if ``a`` and ``b`` are one workspace under two names (a bind mount...)."""
    try:
        return os.path.samefile(Path(a) / ICL_DIR / ID_FILE, b / ICL_DIR / ID_FILE)
    except OSError:
        return False


def bind(store: Any, claim: bool = True, adopt: bool = False) -> list[str]:
    """Check that ``store``'s (a Store's) catalog serves its workspace (see the module doc): nothing
    to do for the workspace's own catalog. ``claim``: record this workspace in a catalog
    that serves none yet (False: only refuse, before the schema is brought up to date).
    ``adopt``: record this folder as a place of the catalog's workspace (a moved one).
    Returns what was recorded, one line each; CatalogOfAnotherWorkspace (exit 3) when
    the catalog serves another workspace, or this one is a copy."""
    if store.own_catalog:
        return []
    cat, root = store.catalog, store.root
    places = cat.reader.places()
    if not places:
        if not claim and not adopt:
            return []
        return _claim(store, make_workspace_id(root))
    mine, owner, here = workspace_id(root), places[0][0], str(root)
    if mine == owner and any(path == here for _, path, _, _ in places) and not adopt:
        return []
    shown = display_url(store.catalog_url)
    last = places[-1][1]
    if mine != owner:
        raise CatalogOfAnotherWorkspace(
            f"the catalog {shown} belongs to another workspace (last seen at {last}), not "
            f"to {root}: two workspaces never share a catalog; give this one its own (point "
            "ICL_CATALOG_URL at a new, empty database, or unset it for .icl/catalog.db), "
            f"then `icl verify --rebuild -w {root}` records its files there")
    if any(path == here for _, path, _, _ in places):
        return [f"{root} is already a place of this catalog's workspace: nothing to adopt"]
    identity = cat.identity()
    if identity is not None and all(c not in (None, identity) for _, _, _, c in places):
        # The catalog was copied into another database: it serves whoever copied it.
        return _claim(store, owner, replace=True)
    copied = [path for _, path, _, _ in places
              if path != here and _holds(path, owner) and not _same_folder(path, root)]
    if copied:
        raise CatalogOfAnotherWorkspace(
            f"{root} is a copy of the workspace at {copied[-1]} (the same workspace id), "
            f"whose catalog {shown} is: a copy is a second workspace and needs a catalog of "
            "its own: point ICL_CATALOG_URL at a new, empty database (or unset it for "
            f".icl/catalog.db), then `icl verify --rebuild -w {root}` records its files there")
    if not any(path == here or _same_folder(path, root) for _, path, _, _ in places) \
            and not adopt:
        raise CatalogOfAnotherWorkspace(
            f"the catalog {shown} serves this workspace at {last}, not at {root}: if the "
            f"workspace was moved here (or this is that folder seen from another machine), "
            f"run `icl verify --adopt -w {root}` once; a copy needs a catalog of its own "
            "(a new database in ICL_CATALOG_URL)")
    if not adopt:
        return []  # the recorded place is this folder under another name
    return _adopt(store, owner, identity, last)


def _place(store: Any, wid: str, identity: str | None):
    from .orm import WorkspacePlace

    return WorkspacePlace(workspace_id=wid, path=str(store.root), host=socket.gethostname(),
                          catalog=identity)


def _claim(store: Any, wid: str, replace: bool = False) -> list[str]:
    """Record this workspace as the one the catalog serves (``replace``: instead of the
    workspace its rows name, in a catalog copied from that one's)."""
    from sqlalchemy import delete, select

    from .orm import WorkspacePlace

    identity = store.catalog.identity()

    def record(s: Session) -> list[str] | None:
        rows = s.scalars(select(WorkspacePlace).order_by(WorkspacePlace.id)).all()
        if rows and not replace:
            return None  # another process claimed it meanwhile: check against that
        s.execute(delete(WorkspacePlace))
        s.add(_place(store, wid, identity))
        return [f"this workspace ({store.root}) is the one the catalog serves"]

    done = store.catalog.write(record)
    return bind(store, claim=False) if done is None else done


def _adopt(store: Any, wid: str, identity: str | None, last: str) -> list[str]:
    """Record this folder as a place of the workspace; forget the places this machine
    recorded that hold it no more (where it was moved from)."""
    from sqlalchemy import select

    from .orm import WorkspacePlace

    host = socket.gethostname()

    def record(s: Session) -> list[str]:
        for row in s.scalars(select(WorkspacePlace)).all():
            if row.host == host and not _holds(row.path, wid):
                s.delete(row)
        s.add(_place(store, wid, identity))
        return [f"this workspace now serves the catalog from {store.root} (it was last "
                f"seen at {last})"]

    return store.catalog.write(record)
