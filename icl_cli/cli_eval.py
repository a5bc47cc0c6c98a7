"""``icl evaluate`` and ``icl attack``: the commands that measure a trained model.

Registered on :data:`icl_cli.app.app`; they share its options and helpers.
"""

from __future__ import annotations

from typing import Annotated

import typer

from icl_cli import ui
from icl_cli.app import (
    Device,
    Experiment,
    Json,
    NoMlflow,
    Round,
    Threads,
    Workspace,
    _errors,
    _runtime,
    _store,
    app,
)


@app.command()
def evaluate(
    round_: Annotated[int | None, typer.Option(
        "--round", "-r", help="Round t (default: the latest checkpoint).")] = None,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Test error (and validation error, when a split is held out), with per-class error."""
    from icl_cli.steps.evaluate import evaluate_round

    with ui.user_errors():
        store = _store(workspace)
        exp = store.experiment(experiment)
        if round_ is None:
            round_ = max((c.round for c in store.checkpoints(exp.name)), default=0)
        rows = evaluate_round(store, exp.name, round_, _runtime(device, threads,
                                                                 no_mlflow=no_mlflow))
    if json:
        return ui.emit_json(rows)
    _errors(rows, None)
    k = len(rows[0].per_class)
    ui.table("per-class error %", ["split", *map(str, range(k))],
             [[e.split, *(f"{100 * p:.1f}" for p in e.per_class)] for e in rows])


@app.command()
def attack(
    round_: Round,
    against: Annotated[str, typer.Option(
        help="EXPERIMENT[:ROUND] to compare with (default round: the same).")],
    eps: Annotated[float, typer.Option(help="FGSM step in [0, 1] pixel units.")] = 0.125,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Two-way FGSM (paper 4.1): made on A from test images A gets right, how many fool A,
    how many of those also fool B; then the same from B."""
    from icl_cli.steps.evaluate import attack as run_attack
    from icl_cli.steps.init import parse_from

    with ui.user_errors():
        other, other_round = parse_from(against) if ":" in against else (against, None)
        rows = run_attack(_store(workspace), experiment, round_, other, other_round, eps,
                          _runtime(device, threads, no_mlflow=no_mlflow))
    if json:
        return ui.emit_json(rows)
    ui.table(f"FGSM eps {eps}", ["made on", "correct", "fool it", "also fool", "other"],
             [[r.source, r.correct, r.fool_source, r.fool_both, r.other] for r in rows])
