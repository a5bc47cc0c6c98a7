"""The commands that look at a workspace: ``icl status``, ``icl verify``, ``icl report`` and
``icl inspect``.

``status``, ``verify`` and ``report`` read the catalog without torch, SQLAlchemy, MLflow or
h5py (a SQLite catalog through the standard library's sqlite3): each answers in well under
a second (benchmarks/startup.py checks it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from icl_cli.cli import ui
from icl_cli.cli.main import (
    Experiment,
    Json,
    NoMlflow,
    Round,
    Workspace,
    app,
    open_store,
    user_errors,
)


@app.command()
def inspect(
    round_: Round,
    version: Annotated[int | None, typer.Option(help="Shard version (default: active).")]
    = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compute it again, even when its result is recorded for the same "
        "shard (without --force, such a result is printed from the catalog at once).")]
    = False,
    experiment: Experiment = None, workspace: Workspace = None, json: Json = False,
) -> None:
    """Per-class counts, pass rate, steps, logits, distance to the nearest training image,
    and a PNG grid of samples (a training image on top of each class column)."""
    from icl_cli.finished import answer

    with user_errors():
        r = None if force else answer("inspect", workspace, experiment, t=round_,
                                      version=version)
        if r is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.inspect import inspect_round

            r = inspect_round(open_store(workspace), experiment, round_, version)
    if json:
        return ui.emit_json(r)
    ui.table(f"'{r.experiment}' round {r.round} shard v{r.version} ({r.count} samples)",
             ["class", "count", "pass %", "mean steps", "mean logit", "nearest train L2"],
             [[c.k, c.count, ui.pct(c.pass_rate), f"{c.mean_steps:.1f}",
               f"{c.mean_logit:.2f}", f"{c.nearest_train:.2f}"] for c in r.classes])
    ui.table("steps histogram", ["steps", "samples"],
             [[f"{a}-{b}", n] for a, b, n in r.steps_histogram])
    ui.out.print(f"grid: {r.grid}")


@app.command()
def status(workspace: Workspace = None, json: Json = False) -> None:
    """Experiments, rounds, errors and what is running now."""
    from icl_cli.steps.report import experiment_rows

    with user_errors():
        store = open_store(workspace)
        rows = experiment_rows(store)
        steps = store.steps(last=5)
    if json:
        return ui.emit_json({"workspace": str(store.root), "experiments": rows,
                             "recent_steps": steps})
    any_stale = any(r.stale for r in rows)  # the column only when there is something in it
    ui.table(f"workspace {store.root}", ["experiment", "method", "mode", "rounds", "shards",
                                         "last test %", "running"] + ["stale"] * any_stale,
             [[r.experiment, r.method, r.mode, r.rounds if r.rounds >= 0 else "-", r.shards,
               ui.pct(r.test_error_last), "; ".join(r.running) or "-"]
              + [", ".join(map(str, r.stale)) or "-"] * any_stale for r in rows])
    for r in rows:
        if r.stale:
            first = min(r.stale)
            ui.note(f"'{r.experiment}': round {first} is stale ({r.stale[first]}); "
                    f"`icl run -e {r.experiment} --rounds {max(r.rounds, max(r.stale))}` "
                    "redoes it and the rounds after it")
    own = {r.experiment: r.config.get("train", {}) for r in rows}
    ui.table("recent steps", ["experiment", "step", "round", "state", "seconds", "changed"],
             [[s.experiment, s.name, s.round, s.state,
               "-" if s.seconds is None else f"{s.seconds:.1f}",
               _changed(s.config.get("train"), own.get(s.experiment))] for s in steps])


def _changed(used: dict | None, own: dict | None) -> str:
    """A round's reclassify settings that differ from its experiment's, e.g. 'epochs=1'."""
    if not used or not own:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in used.items() if own.get(k, v) != v) or "-"


@app.command()
def verify(
    repair: Annotated[bool, typer.Option(
        "--repair", help="Delete temporary leftovers; mark dead running steps interrupted.")]
    = False,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Re-create a lost or emptied catalog from the shards' and "
        "checkpoints' own metadata (no file is changed).")] = False,
    adopt: Annotated[bool, typer.Option(
        "--adopt", help="The workspace was moved here: record its new place in its "
        "ICL_CATALOG_URL catalog (a copy is refused: it needs a catalog of its own).")]
    = False,
    workspace: Workspace = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Check every shard and checkpoint hash, list orphans and temporary leftovers. With
    --repair, also log into MLflow what the catalog holds and MLflow lost."""
    with user_errors():
        if rebuild:
            from store import Store

            store = Store.rebuild(workspace)
        elif adopt:
            from store import Store, find_workspace

            store = Store.open(find_workspace(workspace), adopt=True)
        else:
            store = open_store(workspace)
        report = store.verify(repair=repair)
        if repair and not no_mlflow:
            from store.tracking import sync_from_catalog

            report.repaired.extend(f"mlflow: {line}" for line in sync_from_catalog(store))
    if json:
        ui.emit_json(report)
    else:
        for line in _verify_lines(report, repair):
            ui.out.print(line, highlight=False)
        ui.out.print(("workspace consistent" if report.ok else "workspace has problems")
                     + (f"; {len(report.stale)} stale round(s): `icl run` redoes them"
                        if report.stale else ""))
    raise typer.Exit(0 if report.ok or (repair and not report.problems) else 4)


def _verify_lines(report, repair: bool) -> list[str]:
    """``icl verify``'s findings, one line each, before its verdict."""
    from store.verify import join_command

    return [*(f"problem: {line}" for line in report.problems),
            *(f"temporary{' (removed)' if repair else ''}: {p}" for p in report.temporary),
            *(f"orphan: {p}" for p in report.orphans),
            *(f"part not joined yet: {p} (the round's last part joins it, or "
              f"`{join_command(p)}`)" for p in report.parts),
            *(f"obsolete part: {line}" for line in report.obsolete),
            *(f"repaired: {line}" for line in report.repaired),
            *(f"stale: {line}" for line in report.stale),
            *(f"rebuilt: {line}" for line in report.rebuilt)]


REPORT_PLOT = "report-error-vs-round.png"


@app.command()
def report(
    workspace: Workspace = None, json: Json = False,
    plot: Annotated[bool, typer.Option(
        help="Also write an error-vs-round PNG of every experiment (figures/ at the "
        "workspace's top).")] = True,
    card: Annotated[bool, typer.Option(
        "--card", help="Also write each experiment's reproducibility card, cards/NAME.md "
        "and cards/NAME.json at the workspace's top: its config, data fingerprint, seeds, "
        "every step with the icl command that reproduces it and where it ran (device, "
        "CPU/GPU model, icl and torch versions, determinism), the sha256 of its "
        "checkpoints and shards, and its results (paths on stderr).")] = False,
) -> None:
    """A markdown table across experiments (errors in %; best round chosen on validation)."""
    from icl_cli.steps.report import experiment_rows, markdown, plot_errors

    with user_errors():
        store = open_store(workspace)
        rows = experiment_rows(store)
        cards = []
        if card:
            from icl_cli.card import write_cards

            cards = write_cards(store, [r.experiment for r in rows], rows)
        path = None
        if plot and rows:
            names = [r.experiment for r in rows]
            # Every experiment's curve: in the workspace's own figures/, not in one
            # experiment's folder.
            path = store.workspace_figure_path(REPORT_PLOT)
            if not _newer_than_catalog(store, path):  # matplotlib costs ~0.5 s to import
                path = plot_errors(store, names, path=path)
    for md, js in cards:  # stderr: stdout keeps the report (or its JSON) alone
        ui.note(f"card: {md} and {js}")
    if json:
        return ui.emit_json(rows)
    print(markdown(rows))
    if path:
        ui.note(f"plot: {path}")


def _newer_than_catalog(store, path: Path) -> bool:
    """Whether ``path`` was written after the catalog last changed (so it shows what the
    catalog holds now). Only for a catalog that is a file of this workspace: SQLite writes
    go to ``catalog.db`` and its ``-wal`` file (which an open connection creates empty, so
    an empty one says nothing); with a server catalog, always False."""
    catalog = store.root / ".icl" / "catalog.db"
    if os.environ.get("ICL_CATALOG_URL") or not catalog.is_file() or not path.is_file():
        return False
    changed = catalog.stat().st_mtime_ns
    with contextlib.suppress(OSError):
        wal = catalog.with_name("catalog.db-wal").stat()
        if wal.st_size:
            changed = max(changed, wal.st_mtime_ns)
    return path.stat().st_mtime_ns > changed
