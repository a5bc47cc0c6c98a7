"""The commands that measure a trained model: ``icl evaluate``, ``icl attack``, ``icl ood``
and ``icl quality``. Run again with the same settings on the same checkpoint, each prints
its recorded result from the catalog without importing torch (``icl_cli.finished``);
``--force`` computes it again."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icl_cli.cli import ui
from icl_cli.cli.main import (
    MAX_BINS,
    MAX_EPOCHS,
    MAX_LIMIT,
    MAX_PGD_STEPS,
    MAX_PGD_WORK,
    MAX_RESTARTS,
    Device,
    Experiment,
    Json,
    NoMlflow,
    Round,
    Threads,
    Workspace,
    app,
    at_most,
    errors_table,
    fail,
    open_store,
    runtime,
    user_errors,
)

Recompute = Annotated[bool, typer.Option(
    "--force", help="Compute it again, even when its result is recorded for the same "
    "checkpoint and settings (without --force, such a result is printed from the catalog "
    "at once).")]


@app.command()
def evaluate(
    round_: Annotated[int | None, typer.Option(
        "--round", "-r", help="Round t (default: the latest checkpoint).")] = None,
    bins: Annotated[int, typer.Option(
        help="Equal-width confidence bins of the expected calibration error (at most "
        "1,000).", callback=at_most("--bins", MAX_BINS))] = 15,
    plot: Annotated[bool, typer.Option(
        help="Also write the reliability diagram (a PNG among the figures).")] = True,
    force: Recompute = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Test error (and validation error, when a split is held out), with per-class error,
    negative log-likelihood and expected calibration error of softmax(logits)."""
    from icl_cli.finished import answer

    with user_errors():
        rows = None if force else answer("evaluate", workspace, experiment, t=round_,
                                         bins=bins, plot=plot, device=device)
        if rows is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.evaluate import evaluate_round

            store = open_store(workspace)
            exp = store.experiment(experiment)
            if round_ is None:
                round_ = max((c.round for c in store.checkpoints(exp.name)), default=0)
            rows = evaluate_round(store, exp.name, round_,
                                  runtime(device, threads, no_mlflow=no_mlflow), bins, plot)
    if json:
        return ui.emit_json(rows)
    errors_table(rows, None)
    k = len(rows[0].per_class)
    ui.table("per-class error %", ["split", *map(str, range(k))],
             [[e.split, *(f"{100 * p:.1f}" for p in e.per_class)] for e in rows], dense=True)
    ui.table(f"calibration ({bins} bins)", ["split", "NLL", "ECE %"],
             [[e.split, f"{e.nll:.4f}", f"{100 * e.ece:.2f}"] for e in rows])


@app.command()
def attack(
    round_: Round,
    against: Annotated[str, typer.Option(
        help="EXPERIMENT[:ROUND] to compare with (default round: the same).")],
    eps: Annotated[float, typer.Option(
        help="L-inf budget in [0, 1] pixel units (FGSM: its one step).")] = 0.125,
    method: Annotated[str, typer.Option(help="fgsm, or pgd (L-inf, Madry et al.).")] = "fgsm",
    steps: Annotated[int, typer.Option(
        help="PGD: gradient steps per restart (at most 10,000; steps x restarts at most "
        "100,000).", callback=at_most("--steps", MAX_PGD_STEPS))] = 40,
    step_size: Annotated[float | None, typer.Option(
        help="PGD: step in pixel units (default 2.5 * eps / steps).")] = None,
    restarts: Annotated[int, typer.Option(
        help="PGD: random restarts; each retries only the images still classified right "
        "(at most 100).", callback=at_most("--restarts", MAX_RESTARTS))] = 1,
    random_start: Annotated[bool, typer.Option(
        help="PGD: start each restart at a uniform draw in the eps ball.")] = True,
    seed: Annotated[int, typer.Option(help="PGD: seed of the random starts.")] = 0,
    limit: Annotated[int | None, typer.Option(
        help="Attack only the first N test images (default: all; at most 10,000,000); "
             "recorded with the attack.", callback=at_most("--limit", MAX_LIMIT))] = None,
    force: Recompute = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Two-way attack (paper 4.1): made on A from test images A gets right, how many fool
    A, how many of those also fool B; then the same from B; and each maker's robust
    accuracy (its test accuracy under the attack)."""
    from icl_cli.finished import answer

    if method == "pgd" and steps * restarts > MAX_PGD_WORK:
        raise fail(f"--steps {steps} x --restarts {restarts} is {steps * restarts:,} "
                   f"gradient steps per image, more than {MAX_PGD_WORK:,}: use fewer", 3)
    given = dict(method=method, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                 random_start=random_start, seed=seed, limit=limit)  # AttackSettings' fields
    name, colon, at = against.partition(":")
    with user_errors():
        rows = None if force or (colon and not at.isdigit()) else answer(
            "attack", workspace, experiment, t=round_, other=name,
            other_round=int(at) if colon else None, settings=given, device=device)
        if rows is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.attack import AttackSettings, attack_round
            from icl_cli.steps.init import parse_from

            other, other_round = parse_from(against, "--against") if ":" in against \
                else (against, None)
            rows = attack_round(open_store(workspace), experiment, round_, other,
                                other_round, AttackSettings(**given),
                                runtime(device, threads, no_mlflow=no_mlflow))
    if json:
        return ui.emit_json(rows)
    ui.table(f"{method.upper()} eps {eps}",
             ["made on", "correct", "fool it", "also fool", "other", "robust acc %"],
             [[r.source, r.correct, r.fool_source, r.fool_both, r.other,
               f"{100 * r.robust_accuracy:.2f}"] for r in rows])


@app.command()
def ood(
    round_: Round,
    ood_root: Annotated[list[Path] | None, typer.Option(
        help="A folder in MNIST's IDX layout whose test images are out-of-distribution "
             "(repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated sets.")] = 0,
    plot: Annotated[bool, typer.Option(help="Also write the score histograms (PNG).")] = True,
    limit: Annotated[int | None, typer.Option(
        help="Only the first N test images, and N images of each set (default: all; at "
        "most 10,000,000).", callback=at_most("--limit", MAX_LIMIT))]
    = None,
    force: Recompute = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Out-of-distribution detection: AUROC, AUPR and FPR at 95 % TPR of max softmax, max
    logit (for ICL: max_k f_k, the paper's "is it class k") and logsumexp, test images
    against uniform, Gaussian (sigma_r), constant, rotated, flipped, inverted and blended
    images, and each --ood-root folder."""
    from icl_cli.finished import answer

    with user_errors():
        rows = None if force else answer("ood", workspace, experiment, t=round_,
                                         roots=ood_root, seed=seed, plot=plot, limit=limit,
                                         device=device)
        if rows is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.ood import ood as run_ood

            store = open_store(workspace)
            rows = run_ood(store, store.experiment(experiment).name, round_,
                           runtime(device, threads, no_mlflow=no_mlflow), ood_root, seed,
                           plot, limit)
    if json:
        return ui.emit_json(rows)
    ui.table(f"OOD detection, round {round_} (%)", ["set", "score", "AUROC", "AUPR", "FPR95"],
             [[r.set, r.score, f"{100 * r.auroc:.2f}", f"{100 * r.aupr:.2f}",
               f"{100 * r.fpr95:.2f}"] for r in rows])


@app.command()
def quality(
    epochs: Annotated[int, typer.Option(
        help="Epochs of the reference classifier (at most 10,000).",
        callback=at_most("--epochs", MAX_EPOCHS))] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the reference classifier.")] = 0,
    plot: Annotated[bool, typer.Option(help="Also write the quality-vs-round PNG.")] = True,
    force: Recompute = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Sample quality per round: a reference classifier of another architecture (an MLP),
    trained on the real training set, scores each active shard: the share it assigns to
    the target class, its mean confidence, and the classifier-feature Frechet distance to
    the test images (not FID)."""
    from icl_cli.finished import answer

    with user_errors():
        result = None if force else answer("quality", workspace, experiment, epochs=epochs,
                                           seed=seed, plot=plot, device=device)
        if result is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.quality import quality as run_quality

            store = open_store(workspace)
            result = run_quality(store, store.experiment(experiment).name,
                                 runtime(device, threads, no_mlflow=no_mlflow), epochs, seed,
                                 plot)
    if json:
        return ui.emit_json(result)
    ui.table(f"sample quality (reference test error {100 * result.reference_test_error:.2f} "
             f"%, real-data distance {result.real_frechet:.3g})",
             ["round", "v", "n", "to target %", "confidence %", "Frechet (features)"],
             [[r.round, r.version, r.count, f"{100 * r.target_share:.1f}",
               f"{100 * r.confidence:.1f}", f"{r.frechet:.3g}"] for r in result.rounds])
