"""The ``icl`` command line: one thin function per algorithm step.

Each command parses options, opens the store, calls one step function from
``icl_cli.steps`` and renders its result. torch is imported only inside commands, so
``icl --help`` is instant.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from icl_cli import ui

app = typer.Typer(
    help="Introspective Classifier Learning: a CNN classifier that is also its own generator. "
    "Train C_0 with `icl init`, then per round `icl synthesize`, `icl reclassify`, "
    "`icl evaluate` (or `icl run --rounds T`). " + ui.EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    cls=ui.OneLineErrors,
    pretty_exceptions_enable=False,
    # Plain click help: Typer's rich help imports rich.markdown, pygments and markdown-it
    # (~0.25 s), which alone would take `icl --help` past 0.5 s (BENCHMARKS.md).
    rich_markup_mode=None,
)

def _version(value: bool) -> None:
    if value:
        from icl_cli import __version__

        print(f"icl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print icl's version.")] = False,
          ) -> None:
    pass


# --- options shared by several commands ---------------------------------------------
Workspace = Annotated[Path | None, typer.Option(
    "--workspace", "-w", envvar="ICL_WORKSPACE",
    help="Workspace folder (default: the current folder or the nearest parent holding one).")]
Experiment = Annotated[str | None, typer.Option(
    "--experiment", "-e", help="Experiment name (default: the only one, or the latest).")]
ROUND_LIMIT = 2**31  # what every catalog backend stores as an integer


def _bounded(flag: str):
    """A callback refusing a count or round too large to be stored (exit 3, one line)."""
    def check(value: int | None) -> int | None:
        if value is not None and abs(value) >= ROUND_LIMIT:
            raise ui.fail(f"{flag} must be below {ROUND_LIMIT}, got {value}", 3)
        return value
    return check


Round = Annotated[int, typer.Option("--round", "-r", help="Round t.",
                                    callback=_bounded("--round"))]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Threads = Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's).")]
Amp = Annotated[bool, typer.Option("--amp", help="bf16 autocast (GPU).")]
NoMlflow = Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Force = Annotated[bool, typer.Option("--force", help="Redo a finished step (new version).")]
Replay = Annotated[bool, typer.Option(
    "--replay", help="Re-run the recorded step from its stored config and seed and report "
    "whether the result matches bit for bit.")]


def _store(workspace: Path | None, create: bool = False):
    from store import NotAWorkspace, Store
    from store.workspace import find_workspace

    if create:  # into the enclosing workspace, if any (never a nested one)
        if workspace is None:
            try:
                workspace = find_workspace(None)
            except NotAWorkspace:
                workspace = Path.cwd()
        return Store.init(workspace.resolve())
    return Store.open(find_workspace(workspace))


def _runtime(device: str, threads: int | None, amp: bool = False, no_mlflow: bool = False,
             progress: bool = True):
    from icl_cli.steps.common import Runtime

    return Runtime(device=device, threads=threads, amp=amp, mlflow=not no_mlflow,
                   progress=ui.RichProgress(progress))


def _replay_verdict(what: str, match: bool | None, note: str | None = None) -> None:
    """Print whether a replayed step reproduced its record; exit 4 when it did not (the
    same code as with --json, where ``replay_match`` carries the verdict). ``note``: the
    verdict in words when it is not a bit-for-bit comparison (another world size)."""
    verdict = note or ('matches bit for bit' if match else 'DIFFERS from the record')
    ui.out.print(f"replay of {what}: {verdict}")
    raise typer.Exit(0 if match else 4)


def _errors(rows: list, title: str) -> None:
    ui.table(title, ["experiment", "round", "split", "error %", "n"],
             [[e.experiment, e.round, e.split, ui.pct(e.error), e.n] for e in rows])


@app.command()
def init(
    experiment: Experiment = None,
    method: Annotated[str, typer.Option(help="icl, icl-noise or baseline.")] = "icl",
    from_: Annotated[str | None, typer.Option(
        "--from", help="EXPERIMENT:ROUND whose checkpoint, data subset, seed and batch order "
        "this experiment shares (paired comparison).")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="mnist-embedded (ships with icl), idx or mnist (an IDX folder, see --data-root), "
        "cifar10, svhn, fake-cifar10, fake-svhn.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder of the data files.")] = None,
    download: Annotated[bool | None, typer.Option(
        "--download", help="Let torchvision download CIFAR-10/SVHN.")] = None,
    train_size: Annotated[int | None, typer.Option(
        help="Class-balanced training subset drawn by --seed (default: all).")] = None,
    val_size: Annotated[int | None, typer.Option(
        help="Validation images held out of the training set.")] = None,
    augment: Annotated[bool | None, typer.Option(help="Pad 4, crop, flip.")] = None,
    mode: Annotated[str | None, typer.Option(help="softmax or ova (one-vs-all).")] = None,
    arch: Annotated[str | None, typer.Option(
        help="mnist-cnn, resnet32, resnet8 or tiny.")] = None,
    init_epochs: Annotated[int | None, typer.Option(help="Epochs to train C_0.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Reclassify epochs per round.")] = None,
    real_epochs: Annotated[int | None, typer.Option(
        help="Extra real-data-only epochs at the end of each round.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="Reclassify learning rate.")] = None,
    decay_round: Annotated[int | None, typer.Option(help="Round of the x0.1 decay.")] = None,
    pn_weight: Annotated[float | None, typer.Option(
        help="Weight w of the pseudo-negative loss term.")] = None,
    pn_weighting: Annotated[str | None, typer.Option(
        help="per-sample (eq. 11: a pseudo-negative weighs one real image times w; default), "
        "batch-mean (the ablation: w * mean over a batch's share of the pool) or drawn (the "
        "authors' batches: each real batch of B images joined by B pseudo-negatives drawn "
        "from the pool by --pn-recency, per network in ova; mean CE + w * mean softplus).")]
    = None,
    pn_recency: Annotated[float | None, typer.Option(
        help="With --pn-weighting drawn: round t of the pool is drawn with weight "
        "r^(newest - t), in (0, 1] (default 0.5, as the authors' INN code; 1: every round "
        "alike).")] = None,
    clip_grad: Annotated[float | None, typer.Option(
        help="Clip each reclassify step's gradient to this global L2 norm (0: off; "
        "default: off).")]
    = None,
    weight_decay: Annotated[float | None, typer.Option(
        help="SGD weight decay of the reclassify steps (default 0).")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Run a batch with more real + pseudo-negative rows than this in pieces, "
        "gradients accumulated: the same step, bounded memory (no batch norm).")] = None,
    count: Annotated[int | None, typer.Option(help="Pseudo-negatives per class per round.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Sampler steps at most.")] = None,
    sampler_lr: Annotated[float | None, typer.Option(help="Sampler Adam step size.")] = None,
    reference_std: Annotated[float | None, typer.Option(help="sigma_r of p_r.")] = None,
    stop_rule: Annotated[str | None, typer.Option(help="logit or argmax.")] = None,
    langevin_std: Annotated[float | None, typer.Option(help="SGLD noise std.")] = None,
    clamp: Annotated[bool | None, typer.Option(
        help="Clamp pseudo-negatives to the data range [-1, 1] after each sampler step.")]
    = None,
    seed: Annotated[int | None, typer.Option(
        help="Seeds the training subset and validation split (unless --data-seed), the "
        "initial weights, the batch order and the sampler (default 0).")] = None,
    data_seed: Annotated[int | None, typer.Option(
        help="Draw the training subset and validation split from this seed instead of "
        "--seed.")] = None,
    workspace: Workspace = None, device: Device = "auto", threads: Threads = None,
    amp: Amp = False, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Make this folder a workspace (if needed), record an experiment's config, train C_0."""
    from icl_cli.steps.init import init_experiment

    groups: dict[str, dict[str, Any]] = {
        # The data folder as an absolute path: never resolved against a later command's
        # current folder.
        "data": dict(dataset=dataset, root=str(data_root.resolve()) if data_root else None,
                     download=download, train_size=train_size, val_size=val_size,
                     augment=augment, seed=data_seed if data_seed is not None else seed),
        "model": dict(mode=mode, arch=arch),
        "train": dict(epochs=epochs, real_epochs=real_epochs, batch_size=batch_size, lr=lr,
                      decay_round=decay_round, pn_weight=pn_weight, pn_weighting=pn_weighting,
                      pn_recency=pn_recency, clip_grad=clip_grad, weight_decay=weight_decay,
                      max_batch=max_batch),
        "sampler": dict(count=count, max_steps=max_steps, lr=sampler_lr,
                        reference_std=reference_std, stop_rule=stop_rule,
                        langevin_std=langevin_std, clamp=clamp),
    }
    overrides: dict[str, Any] = {"method": method}
    overrides.update({k: {n: v for n, v in g.items() if v is not None}
                      for k, g in groups.items()})
    overrides = {k: v for k, v in overrides.items() if v != {}}
    overrides.update({k: v for k, v in dict(seed=seed, init_epochs=init_epochs).items()
                      if v is not None})
    with ui.user_errors():
        # --from needs an existing workspace; otherwise `init` makes one, once the request
        # has been checked (a mistake leaves the folder as it was).
        result = init_experiment(lambda: _store(workspace, create=from_ is None),
                                 experiment or method, overrides,
                                 _runtime(device, threads, amp, no_mlflow), from_=from_)
    if json:
        return ui.emit_json(result)
    if result.reused:
        ui.note(f"experiment '{result.experiment}' already has its round-0 checkpoint")
    else:
        _errors(result.evaluations, f"experiment '{result.experiment}', round 0 (C_0)")


@app.command()
def synthesize(
    round_: Round,
    count: Annotated[int | None, typer.Option(help="Samples per class (the paper's l).")] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    sampler_lr: Annotated[float | None, typer.Option(
        help="Adam step size on the input (as --sampler-lr of icl init).")] = None,
    reference_std: Annotated[float | None, typer.Option()] = None,
    stop_rule: Annotated[str | None, typer.Option(help="logit or argmax.")] = None,
    langevin_std: Annotated[float | None, typer.Option()] = None,
    clamp: Annotated[bool | None, typer.Option(help="Clamp samples to [-1, 1].")] = None,
    check_every: Annotated[int | None, typer.Option(help="Drop passed samples every N steps.")]
    = None,
    part: Annotated[str | None, typer.Option(
        "--part", help="i/N: draw part i of N of the round (whole blocks of 256 samples, "
        "bit-identical to the round drawn at once) into a part file; the last part recorded "
        "joins them into the shard.")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Join the round's recorded parts into its shard.")] = False,
    force: Force = False, replay: Replay = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Draw round t's pseudo-negatives from checkpoint t-1 into a new HDF5 shard (in parts
    with --part i/N; under torchrun the ranks split it by themselves)."""
    from icl_cli.config import SamplerChanges
    from icl_cli.steps.synthesize import parse_part, synthesize_round

    with ui.user_errors():
        changes = SamplerChanges(count=count, max_steps=max_steps, lr=sampler_lr,
                                 reference_std=reference_std, stop_rule=stop_rule,
                                 langevin_std=langevin_std, clamp=clamp,
                                 check_every=check_every)
        r = synthesize_round(_store(workspace), experiment, round_,
                             _runtime(device, threads, amp, no_mlflow), force=force,
                             replay=replay, changes=changes,
                             part=None if part is None else parse_part(part), merge=merge)
    if json:
        ui.emit_json(r)
        raise typer.Exit(4 if replay and not r.replay_match else 0)
    if replay:
        _replay_verdict(f"round {r.round} v{r.version}", r.replay_match)
    _synthesis_tables(r)


def _synthesis_tables(r) -> None:
    """A shard's (or a part's, then its round's shard once joined) table."""
    if r.part is not None:
        if r.reused:
            ui.note(f"part {r.part} of round {r.round} already drawn with these settings")
        if r.missing:
            left = ", ".join(f"{i}/{r.part.split('/')[1]}" for i in r.missing)
            ui.note(f"parts {left} of round {r.round} still to draw; the last one recorded "
                    "joins the shard")
    elif r.reused:
        ui.note(f"round {r.round} already synthesized with these settings (v{r.version})")
    what = f"part {r.part} of shard" if r.part is not None else "shard"
    ui.table(f"'{r.experiment}' round {r.round} {what} v{r.version}",
             ["samples", "pass rate %", "mean steps", "steps saved %", "seconds"],
             [[r.count, ui.pct(r.pass_rate), f"{r.mean_steps:.1f}", ui.pct(r.steps_saved),
               f"{r.seconds:.1f}"]])
    if r.shard is not None:
        _synthesis_tables(r.shard)


# Reclassify settings of one round (icl reclassify, icl run): default, the experiment's.
RoundEpochs = Annotated[int | None, typer.Option(
    "--epochs", help="Mixed epochs this round (default: the experiment's).")]
RoundRealEpochs = Annotated[int | None, typer.Option(
    "--real-epochs", help="Real-data-only epochs at the end of this round.")]
RoundLr = Annotated[float | None, typer.Option("--lr", help="Reclassify learning rate.")]
RoundPnWeight = Annotated[float | None, typer.Option(
    "--pn-weight", help="Weight w of the pseudo-negative term.")]
RoundPnWeighting = Annotated[str | None, typer.Option(
    "--pn-weighting", help="per-sample, batch-mean or drawn (see icl init --help).")]
RoundPnRecency = Annotated[float | None, typer.Option(
    "--pn-recency", help="With drawn: round weights r^age, r in (0, 1].")]
RoundClipGrad = Annotated[float | None, typer.Option(
    "--clip-grad", help="Gradient-norm clip (0: off).")]
RoundWeightDecay = Annotated[float | None, typer.Option(
    "--weight-decay", help="SGD weight decay.")]
RoundMaxBatch = Annotated[int | None, typer.Option(
    "--max-batch", help="Rows per forward pass at most (pieces, gradients accumulated).")]


@app.command()
def reclassify(
    round_: Round, epochs: RoundEpochs = None, real_epochs: RoundRealEpochs = None,
    lr: RoundLr = None, pn_weight: RoundPnWeight = None, pn_weighting: RoundPnWeighting = None,
    pn_recency: RoundPnRecency = None, clip_grad: RoundClipGrad = None,
    weight_decay: RoundWeightDecay = None, max_batch: RoundMaxBatch = None,
    force: Force = False, replay: Replay = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Warm-start from checkpoint t-1, train on the data plus shards 1..t, save checkpoint t.
    --epochs, --lr, ... change this round's settings only (recorded; --replay uses them)."""
    from icl_cli.config import TrainChanges
    from icl_cli.steps.reclassify import train_round

    with ui.user_errors():
        changes = TrainChanges(epochs=epochs, real_epochs=real_epochs, lr=lr,
                               pn_weight=pn_weight, pn_weighting=pn_weighting,
                               pn_recency=pn_recency,
                               clip_grad=clip_grad, weight_decay=weight_decay,
                               max_batch=max_batch)
        r = train_round(_store(workspace), experiment, round_,
                        _runtime(device, threads, amp, no_mlflow), force=force, replay=replay,
                        changes=changes)
    if json:
        ui.emit_json(r)
        raise typer.Exit(4 if replay and not r.replay_match else 0)
    if replay:
        _replay_verdict(f"round {r.round}", r.replay_match, r.replay_note)
    if r.reused:
        ui.note(f"round {r.round} already reclassified from the same inputs")
    ui.table(f"'{r.experiment}' round {r.round} reclassify",
             ["epoch", "loss", "real loss", "pn loss", "samples", "seconds"],
             [[e["epoch"], f"{e['loss']:.4f}", f"{e['real_loss']:.4f}", f"{e['pn_loss']:.4f}",
               e["samples"], f"{e['seconds']:.1f}"] for e in r.epochs])


# Commands that measure a trained model (evaluate, attack, ...) live in their own module,
# registered on this app.
from icl_cli import cli_eval  # noqa: E402, F401


@app.command()
def inspect(
    round_: Round,
    version: Annotated[int | None, typer.Option(help="Shard version (default: active).")]
    = None,
    experiment: Experiment = None, workspace: Workspace = None, json: Json = False,
) -> None:
    """Per-class counts, pass rate, steps, logits, distance to the nearest training image,
    and a PNG grid of samples (a training image on top of each class column)."""
    from icl_cli.steps.inspect import inspect_round

    with ui.user_errors():
        r = inspect_round(_store(workspace), experiment, round_, version)
    if json:
        return ui.emit_json(r)
    ui.table(f"'{r.experiment}' round {r.round} shard v{r.version} ({r.count} samples)",
             ["class", "count", "pass %", "mean steps", "mean logit", "nearest train L2"],
             [[c.k, c.count, ui.pct(c.pass_rate), f"{c.mean_steps:.1f}",
               f"{c.mean_logit:.2f}", f"{c.nearest_train:.2f}"] for c in r.classes])
    ui.table("steps histogram", ["steps", "samples"],
             [[f"{a}-{b}", n] for a, b, n in r.steps_histogram])
    ui.out.print(f"grid: {r.grid}")


STEP_SHORT = {"synthesize": "synth", "reclassify": "reclass", "evaluate": "eval"}
Experiments = Annotated[list[str] | None, typer.Option(
    "--experiment", "-e", metavar="NAME", help="Experiment name; give -e several times to "
    "run several experiments, each in its own process, with a live table on stderr "
    "(default: the only one, or the latest).")]


@app.command()
def run(
    rounds: Annotated[int, typer.Option(help="Run rounds 1..T.",
                                        callback=_bounded("--rounds"))],
    count: Annotated[int | None, typer.Option(help="Samples per class per round.")] = None,
    epochs: RoundEpochs = None, real_epochs: RoundRealEpochs = None, lr: RoundLr = None,
    pn_weight: RoundPnWeight = None, pn_weighting: RoundPnWeighting = None,
    pn_recency: RoundPnRecency = None,
    clip_grad: RoundClipGrad = None, weight_decay: RoundWeightDecay = None,
    max_batch: RoundMaxBatch = None,
    parallel: Annotated[int, typer.Option(
        help="With several -e: how many experiments run at once (each with --threads).")]
    = 1,
    executor: Annotated[str | None, typer.Option(
        help="With several -e: run them as one submitit job array, on 'slurm' or 'local' "
        "(subprocesses, the same path); the workspace must be on storage every node sees.")]
    = None,
    executor_param: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE for submitit's AutoExecutor (repeatable), e.g. slurm_partition=gpu, "
        "timeout_min=240, gpus_per_node=1.")] = None,
    experiment: Experiments = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, no_mlflow: NoMlflow = False, json: Json = False,
    progress_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """The whole loop; resumes from the last completed step after an interrupt. --count,
    --epochs, --lr, ... apply to the rounds this call synthesizes and reclassifies.
    Several -e run side by side (--parallel N at a time); a failing one does not stop the
    others, and the exit code is then the first failure's."""
    from icl_cli.config import SamplerChanges, TrainChanges

    with ui.user_errors():
        sampler = SamplerChanges(count=count)
        train = TrainChanges(epochs=epochs, real_epochs=real_epochs, lr=lr,
                             pn_weight=pn_weight, pn_weighting=pn_weighting,
                             pn_recency=pn_recency,
                             clip_grad=clip_grad, weight_decay=weight_decay,
                             max_batch=max_batch)
        names = list(dict.fromkeys(experiment or []))  # in order, each once
        if len(names) > 1:
            if parallel < 1:
                raise ui.fail(f"--parallel must be >= 1, got {parallel}", 3)
            return _run_many(names, rounds, parallel, workspace, json, sampler, train,
                             (executor, executor_param), device=device, threads=threads,
                             amp=amp, no_mlflow=no_mlflow)
        if executor is not None:
            raise ui.fail("--executor runs several experiments: give two or more -e", 3)
        from icl_cli.steps.run import run_rounds

        store = _store(workspace)
        name = store.experiment(names[0] if names else None).name
        runtime = _runtime(device, threads, amp, no_mlflow)
        watch = None
        if progress_fd is not None:  # a child of `icl run -e A -e B`: report to the parent
            from icl_cli.progress import EventWriter, die_with_parent

            die_with_parent()
            events = EventWriter.to_fd(progress_fd)
            runtime, watch = replace(runtime, progress=events), events.watch
        rows = run_rounds(store, name, rounds, runtime, sampler, train, watch)
    if json:
        return ui.emit_json(rows)
    _run_table(name, ui.to_plain(rows))


def _run_table(name: str, rows: list[dict]) -> None:
    """``icl run``'s result for one experiment (rows as plain dicts, as in --json)."""
    ui.table(f"'{name}'", ["round", "test err %", "val err %", "pass %", "mean steps",
                           "ran now"],
             [[r["round"], ui.pct(r["test_error"]), ui.pct(r["val_error"]),
               ui.pct(r["pass_rate"]),
               None if r["mean_steps"] is None else f"{r['mean_steps']:.1f}",
               "+".join(STEP_SHORT.get(s, s) for s in r["ran"]) or "-"] for r in rows])


def _run_many(names: list[str], rounds: int, parallel: int, workspace: Path | None,
              json: bool, sampler, train, submit: tuple[str | None, list[str] | None],
              **run_options) -> None:
    """One ``icl run -e NAME`` child per experiment, a live table on stderr, then each
    experiment's table (or one JSON document, name -> rows) on stdout."""
    import sys

    from icl_cli.config import ExperimentConfig
    from icl_cli.progress import Board, Lane

    if rounds < 0:
        raise ui.fail(f"--rounds must be >= 0, got {rounds}", 3)
    store = _store(workspace)
    for n in names:  # unknown names and settings that cannot run: refused before any start
        train.apply(ExperimentConfig.from_dict(store.experiment(n).config).train)
    common = [sys.executable, "-m", "icl_cli", "run", "-w", str(store.root),
              "--rounds", str(rounds), "--json", *_flags({**sampler.given(),
                                                          **train.given(), **run_options})]
    store.close()
    lanes = [Lane(n, [*common, "-e", n]) for n in names]
    kind, pairs = submit
    if kind is None:
        lanes = Board(lanes, parallel, ui.err).run()
    else:  # one submitit job array; its logs under .icl/submitit (icl_cli.cluster)
        from icl_cli import cluster

        lanes = cluster.run_lanes(lanes, kind, store.root, parallel,
                                  cluster.parse_params(pairs), ui.err)
    failed = [lane for lane in lanes if lane.code != 0]
    if json:
        ui.emit_json({lane.name: lane.result() if lane.code == 0 else
                      {"error": lane.error, "exit_code": lane.code} for lane in lanes})
    else:
        for lane in lanes:
            if lane.code == 0:
                _run_table(lane.name, lane.result() or [])
    for lane in failed:
        ui.err.print(f"[bold red]error:[/] icl run -e {lane.name} failed (exit {lane.code}): "
                     f"{ui.escape(lane.error)}", highlight=False)
    if failed:
        raise typer.Exit(failed[0].code or 1)


def _flags(options: dict[str, Any]) -> list[str]:
    """{"pn_weight": 0.5, "amp": True, "threads": None} -> ["--pn-weight", "0.5", "--amp"]."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


@app.command()
def status(workspace: Workspace = None, json: Json = False) -> None:
    """Experiments, rounds, errors and what is running now."""
    from icl_cli.steps.report import experiment_rows

    with ui.user_errors():
        store = _store(workspace)
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
    workspace: Workspace = None, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Check every shard and checkpoint hash, list orphans and temporary leftovers. With
    --repair, also log into MLflow what the catalog holds and MLflow lost."""
    with ui.user_errors():
        if rebuild:
            from store import Store

            store = Store.rebuild(workspace)
        else:
            store = _store(workspace)
        report = store.verify(repair=repair)
        if repair and not no_mlflow:
            from store.tracking import sync_from_catalog

            report.repaired.extend(f"mlflow: {line}" for line in sync_from_catalog(store))
    if json:
        ui.emit_json(report)
    else:
        for line in report.problems:
            ui.out.print(f"problem: {line}", highlight=False)
        for p in report.temporary:
            ui.out.print(f"temporary{' (removed)' if repair else ''}: {p}", highlight=False)
        for p in report.orphans:
            ui.out.print(f"orphan: {p}", highlight=False)
        for p in report.parts:
            ui.out.print(f"part not joined yet: {p} (the round's last part joins it, or "
                         "`icl synthesize --round t --merge`)", highlight=False)
        for line in report.repaired:
            ui.out.print(f"repaired: {line}", highlight=False)
        for line in report.stale:
            ui.out.print(f"stale: {line}", highlight=False)
        for line in report.rebuilt:
            ui.out.print(f"rebuilt: {line}", highlight=False)
        ui.out.print(("workspace consistent" if report.ok else "workspace has problems")
                     + (f"; {len(report.stale)} stale round(s): `icl run` redoes them"
                        if report.stale else ""))
    raise typer.Exit(0 if report.ok or (repair and not report.problems) else 4)


@app.command()
def report(
    workspace: Workspace = None, json: Json = False,
    plot: Annotated[bool, typer.Option(help="Also write an error-vs-round PNG.")] = True,
) -> None:
    """A markdown table across experiments (errors in %; best round chosen on validation)."""
    from icl_cli.steps.report import experiment_rows, markdown, plot_errors

    with ui.user_errors():
        store = _store(workspace)
        rows = experiment_rows(store)
        path = None
        if plot and rows:
            names = [r.experiment for r in rows]
            path = store.figure_path(names[0], REPORT_PLOT)
            if not _newer_than_catalog(store, path):  # matplotlib costs ~0.5 s to import
                path = plot_errors(store, names, REPORT_PLOT)
    if json:
        return ui.emit_json(rows)
    print(markdown(rows))
    if path:
        ui.note(f"plot: {path}")


REPORT_PLOT = "report-error-vs-round.png"


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


def _terminated(signum, frame) -> None:
    from store.errors import Terminated

    ui.TERMINATED_BY.append(signum)
    raise Terminated  # unwinds like Ctrl-C: the step is logged interrupted, temps removed


def _only_the_command(args: list[str]) -> typer.Typer:
    """``app`` with only the command being run registered. Typer builds every command (it
    inspects each signature) before it parses the line: for icl's 12 that is ~0.1 s of a
    read-only command's 0.5 s. The command's parsing, help and errors are its own, so they
    are unchanged; with no command name first (``icl``, ``icl --help``, ``icl --version``)
    or an unknown one, the whole app answers as before."""
    import copy

    name = args[0] if args else ""
    chosen = [c for c in app.registered_commands
              if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]
    if len(chosen) != 1:
        return app
    only = copy.copy(app)
    only.registered_commands = chosen
    return only


def main() -> None:
    import signal
    import sys

    signal.signal(signal.SIGTERM, _terminated)
    try:
        _only_the_command(sys.argv[1:])()
    except KeyboardInterrupt as exc:  # while Typer builds the command, before any step
        term = type(exc).__name__ == "Terminated"
        ui.fail(ui.TERMINATED if term else ui.INTERRUPTED, 143 if term else 130)
        raise SystemExit(143 if term else 130) from None
    finally:
        # The command's work is recorded (or cleanly refused) by now: a Ctrl-C that lands
        # while the interpreter tears torch down would only print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
