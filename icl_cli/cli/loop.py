"""The loop's commands: ``icl init`` (C_0), then per round ``icl synthesize`` and ``icl
reclassify``, or ``icl run --rounds T`` for all of it (several experiments side by side).

Each setting of the reclassify and synthesis steps is declared once below and used by
every command that takes it: ``icl init`` records it as the experiment's, ``icl
reclassify``, ``icl synthesize`` and ``icl run`` change it for the rounds they run (left
out: the experiment's).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from icl_cli.cli import ui
from icl_cli.cli.main import (
    MAX_EPOCHS,
    MAX_ROUNDS,
    MAX_SAMPLER_STEPS,
    THREADS_PER_CORE,
    Amp,
    ChannelsLast,
    Compile,
    Device,
    Experiment,
    Force,
    Json,
    NoMlflow,
    Replay,
    Round,
    Threads,
    Workspace,
    app,
    at_most,
    bounded,
    cores,
    errors_table,
    fail,
    open_store,
    replay_verdict,
    runtime,
    user_errors,
)
from icl_cli.config import arch_help

# --- settings of the reclassify step (TrainConfig) ----------------------------------
Epochs = Annotated[int | None, typer.Option(
    "--epochs", help="Reclassify epochs per round (mixed: the real images and the "
    "pseudo-negatives; at most 10,000).", callback=at_most("--epochs", MAX_EPOCHS))]
RealEpochs = Annotated[int | None, typer.Option(
    "--real-epochs", help="Extra real-data-only epochs at the end of each round (at most "
    "10,000).", callback=at_most("--real-epochs", MAX_EPOCHS))]
Lr = Annotated[float | None, typer.Option("--lr", help="Reclassify learning rate.")]
PnWeight = Annotated[float | None, typer.Option(
    "--pn-weight", help="Weight w of the pseudo-negative loss term.")]
PnWeighting = Annotated[str | None, typer.Option(
    "--pn-weighting", help="per-sample (eq. 11: a pseudo-negative weighs one real image "
    "times w; a new experiment's default), batch-mean (the ablation: w * mean over a "
    "batch's share of the pool) or drawn (the authors' batches: each real batch of B "
    "images joined by B pseudo-negatives drawn from the pool by --pn-recency, per network "
    "in ova; mean CE + w * mean softplus).")]
PnRecency = Annotated[float | None, typer.Option(
    "--pn-recency", help="With --pn-weighting drawn: round t of the pool is drawn with "
    "weight r^(newest - t), in (0, 1] (a new experiment's: 0.5, as the authors' INN code; "
    "1: every round alike).")]
ClipGrad = Annotated[float | None, typer.Option(
    "--clip-grad", help="Clip each reclassify step's gradient to this global L2 norm (0: "
    "off; a new experiment's: off).")]
WeightDecay = Annotated[float | None, typer.Option(
    "--weight-decay", help="SGD weight decay of the reclassify steps (a new experiment's: "
    "0).")]
MaxBatch = Annotated[int | None, typer.Option(
    "--max-batch", help="Run a batch with more real + pseudo-negative rows than this in "
    "pieces, gradients accumulated: the same step, bounded memory (no batch norm).")]

# --- settings of the synthesis step (SamplerConfig) ---------------------------------
Count = Annotated[int | None, typer.Option(
    "--count", help="Pseudo-negatives per class per round (the paper's l).")]
MaxSteps = Annotated[int | None, typer.Option(
    "--max-steps", help="Sampler steps at most (itself at most 100,000).",
    callback=at_most("--max-steps", MAX_SAMPLER_STEPS))]
SamplerLr = Annotated[float | None, typer.Option(
    "--sampler-lr", help="Sampler Adam step size on the input.")]
ReferenceStd = Annotated[float | None, typer.Option(
    "--reference-std", help="sigma_r of p_r, the reference distribution samples start "
    "from.")]
StopRule = Annotated[str | None, typer.Option("--stop-rule", help="logit or argmax.")]
LangevinStd = Annotated[float | None, typer.Option(
    "--langevin-std", help="SGLD noise std.")]
Clamp = Annotated[bool | None, typer.Option(
    "--clamp/--no-clamp", help="Clamp pseudo-negatives to the data range [-1, 1] after "
    "each sampler step.")]
CheckEvery = Annotated[int | None, typer.Option(
    "--check-every", help="Drop passed samples every N steps.")]


@app.command()
def init(
    experiment: Experiment = None,
    method: Annotated[str, typer.Option(help="icl, icl-noise or baseline.")] = "icl",
    from_: Annotated[str | None, typer.Option(
        "--from", help="EXPERIMENT:ROUND whose checkpoint, data subset, seed and batch order "
        "this experiment shares (paired comparison).")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="mnist-embedded (ships with icl), idx or mnist (an IDX folder, see --data-root), "
        "cifar10, svhn, fake-cifar10, fake-svhn; your own: imagefolder (--data-root DIR "
        "with DIR/train/<class>/ and DIR/test/<class>/ images), npz (--data-root FILE.npz "
        "with x_train, y_train, x_test, y_test) or hf (--data-root DIR where a Hugging Face "
        "DatasetDict with train and test splits was saved with save_to_disk; needs "
        "pip install 'icl-toolkit[hf]').")] = None,
    data_root: Annotated[Path | None, typer.Option(
        help="Folder of the data files (the .npz file for --dataset npz).")] = None,
    image_size: Annotated[int | None, typer.Option(
        help="imagefolder, npz, hf: resize every image to N x N (default: as stored, all of "
        "one size).")] = None,
    download: Annotated[bool | None, typer.Option(
        "--download", help="Let torchvision download CIFAR-10/SVHN.")] = None,
    train_size: Annotated[int | None, typer.Option(
        help="Class-balanced training subset drawn by --seed (default: all).")] = None,
    val_size: Annotated[int | None, typer.Option(
        help="Validation images held out of the training set.")] = None,
    augment: Annotated[bool | None, typer.Option(help="Pad 4, crop, flip.")] = None,
    mode: Annotated[str | None, typer.Option(help="softmax or ova (one-vs-all).")] = None,
    arch: Annotated[str | None, typer.Option(help=arch_help())] = None,
    init_epochs: Annotated[int | None, typer.Option(
        help="Epochs to train C_0 (at most 10,000).",
        callback=at_most("--init-epochs", MAX_EPOCHS))] = None,
    epochs: Epochs = None, real_epochs: RealEpochs = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Real images per training batch, C_0's and each round's.")] = None,
    lr: Lr = None,
    decay_round: Annotated[int | None, typer.Option(help="Round of the x0.1 decay.")] = None,
    pn_weight: PnWeight = None, pn_weighting: PnWeighting = None,
    pn_recency: PnRecency = None, clip_grad: ClipGrad = None,
    weight_decay: WeightDecay = None, max_batch: MaxBatch = None,
    count: Count = None, max_steps: MaxSteps = None, sampler_lr: SamplerLr = None,
    reference_std: ReferenceStd = None, stop_rule: StopRule = None,
    langevin_std: LangevinStd = None, clamp: Clamp = None,
    seed: Annotated[int | None, typer.Option(
        help="Seeds the training subset and validation split (unless --data-seed), the "
        "initial weights, the batch order and the sampler (default 0).")] = None,
    data_seed: Annotated[int | None, typer.Option(
        help="Draw the training subset and validation split from this seed instead of "
        "--seed.")] = None,
    workspace: Workspace = None, device: Device = "auto", threads: Threads = None,
    amp: Amp = False, compile: Compile = False, channels_last: ChannelsLast = False,
    no_mlflow: NoMlflow = False, json: Json = False,
    dump_config: Annotated[bool, typer.Option(
        "--dump-config", help="Print this experiment's settings (the flags, --config and "
        "icl's defaults, resolved) as a TOML file that `icl init --config FILE` reads to "
        "make the same experiment, then exit: nothing is created or trained.")] = False,
    *, ctx: typer.Context,
) -> None:
    """Make this folder a workspace (if needed), record an experiment's config, train C_0."""
    from icl_cli.steps.init import init_experiment

    overrides = _overrides(
        method=method,
        # The data folder as an absolute path: never resolved against a later command's
        # current folder.
        data=dict(dataset=dataset, root=str(data_root.resolve()) if data_root else None,
                  download=download, train_size=train_size, val_size=val_size,
                  augment=augment, seed=data_seed if data_seed is not None else seed,
                  image_size=image_size),
        model=dict(mode=mode, arch=arch),
        train=dict(epochs=epochs, real_epochs=real_epochs, batch_size=batch_size, lr=lr,
                   decay_round=decay_round, pn_weight=pn_weight, pn_weighting=pn_weighting,
                   pn_recency=pn_recency, clip_grad=clip_grad, weight_decay=weight_decay,
                   max_batch=max_batch),
        sampler=dict(count=count, max_steps=max_steps, lr=sampler_lr,
                     reference_std=reference_std, stop_rule=stop_rule,
                     langevin_std=langevin_std, clamp=clamp),
        seed=seed, init_epochs=init_epochs)
    if dump_config:
        with user_errors():
            text = _dump_config(ctx.command, experiment or method, overrides, from_,
                                workspace)
        sys.stdout.write(text)
        return
    with user_errors():
        # --from needs an existing workspace; otherwise `init` makes one, once the request
        # has been checked (a mistake leaves the folder as it was).
        result = init_experiment(lambda: open_store(workspace, create=from_ is None),
                                 experiment or method, overrides,
                                 runtime(device, threads, amp, no_mlflow, compile=compile,
                                         channels_last=channels_last), from_=from_)
    if json:
        return ui.emit_json(result)
    if result.reused:
        ui.note(f"experiment '{result.experiment}' already has its round-0 checkpoint")
    else:
        errors_table(result.evaluations, f"experiment '{result.experiment}', round 0 (C_0)")


def _overrides(**given: Any) -> dict[str, Any]:
    """The settings given to ``icl init`` as the experiment's config overrides, in the
    order given: the options left out (None) and the groups left empty are dropped.

    Example:
        >>> _overrides(method="icl", model=dict(arch="tiny", mode=None), seed=None)
        {'method': 'icl', 'model': {'arch': 'tiny'}}
    """
    out: dict[str, Any] = {}
    for key, value in given.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None} or None
        if value is not None:
            out[key] = value
    return out


# Settings icl init records without an option of their own: the network's code (read
# from the network itself) and the sampler's kind (from --method).
DERIVED = ("source", "kind")


def _dump_config(command, name: str, overrides: dict[str, Any], from_: str | None,
                 workspace: Path | None) -> str:
    """``icl init --dump-config``: the experiment these options make, as a config file of
    one ``[init]`` table holding every setting (icl's defaults included, so that a later
    icl with other defaults still makes the same experiment). With ``--from`` the shared
    settings (data, network, seed, C_0's epochs) are the parent's and are left out."""
    from icl_cli.cli.configfile import option_keys, toml_text
    from icl_cli.steps.init import SHARED, compose, parse_from

    if from_:
        clash = [k for k in SHARED if k in overrides]
        if clash:  # as icl init refuses them
            from icl_cli.errors import StepError

            raise StepError(f"--from {from_} shares {', '.join(clash)} with its parent; "
                            "drop those options to keep the comparison paired")
        with open_store(workspace) as store:
            cfg = compose(overrides, base=store.experiment(parse_from(from_)[0]).config)
    else:
        cfg = compose(overrides)
    values: dict[str, Any] = {"experiment": name, "from": from_}
    values.update(_init_options(cfg, option_keys(command), SHARED if from_ else ()))
    return toml_text({"init": values}, [
        f"icl init --config FILE makes experiment '{name}' again (icl init --dump-config).",
        "Every setting is written out; a flag on the command line changes one."])


def _init_options(cfg, keys: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """The ``icl init`` options (keys of a config file) that make ``cfg``, in the order of
    ExperimentConfig's fields; ``skip``: its top-level fields left out. A setting no option
    sets must be icl's default, or the file could not make the same experiment."""
    import dataclasses

    out: dict[str, Any] = {}
    parts = [cfg] + [getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                     if dataclasses.is_dataclass(getattr(cfg, f.name)) and f.name not in skip]
    for part in parts:
        default = type(part)()
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if f.name in skip or dataclasses.is_dataclass(value) or f.name in DERIVED:
                continue
            key = part.flag(f.name)[2:]
            if key in keys:
                out[key] = list(value) if isinstance(value, tuple) else value
            elif value != getattr(default, f.name):
                from icl_cli.errors import StepError

                raise StepError(f"{type(part).__name__}.{f.name} = {value!r} is not icl's "
                                "default and no icl init option sets it: it cannot be "
                                "written as a config file")
    return out


@app.command()
def synthesize(
    round_: Round, count: Count = None, max_steps: MaxSteps = None,
    sampler_lr: SamplerLr = None, reference_std: ReferenceStd = None,
    stop_rule: StopRule = None, langevin_std: LangevinStd = None, clamp: Clamp = None,
    check_every: CheckEvery = None,
    part: Annotated[str | None, typer.Option(
        "--part", help="i/N: draw part i of N of the round (whole blocks of 256 samples, "
        "bit-identical to the round drawn at once) into a part file; the last part recorded "
        "joins them into the shard.")] = None,
    merge: Annotated[bool, typer.Option(
        "--merge", help="Join the round's recorded parts into its shard.")] = False,
    force: Force = False, replay: Replay = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, compile: Compile = False,
    channels_last: ChannelsLast = False, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Draw round t's pseudo-negatives from checkpoint t-1 into a new HDF5 shard (in parts
    with --part i/N; under torchrun the ranks split it by themselves). --count,
    --max-steps, ... change this round's sampler only (left out: the experiment's)."""
    from icl_cli.config import SamplerChanges
    from icl_cli.finished import answer

    with user_errors():
        changes = SamplerChanges(count=count, max_steps=max_steps, lr=sampler_lr,
                                 reference_std=reference_std, stop_rule=stop_rule,
                                 langevin_std=langevin_std, clamp=clamp,
                                 check_every=check_every)
        r = None if force or replay or merge or part is not None else answer(
            "synthesize", workspace, experiment, t=round_, changes=changes, amp=amp,
            compile=compile, channels_last=channels_last, device=device)
        if r is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.parts import parse_part
            from icl_cli.steps.synthesize import synthesize_round

            r = synthesize_round(open_store(workspace), experiment, round_,
                                 runtime(device, threads, amp, no_mlflow, compile=compile,
                                         channels_last=channels_last), force=force,
                                 replay=replay, changes=changes,
                                 part=None if part is None else parse_part(part), merge=merge)
    if json:
        ui.emit_json(r)
        raise typer.Exit(4 if replay and not r.replay_match else 0)
    if replay:
        replay_verdict(f"round {r.round} v{r.version}", r.replay_match, drift=r.replay_drift)
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


@app.command()
def reclassify(
    round_: Round, epochs: Epochs = None, real_epochs: RealEpochs = None,
    lr: Lr = None, pn_weight: PnWeight = None, pn_weighting: PnWeighting = None,
    pn_recency: PnRecency = None, clip_grad: ClipGrad = None,
    weight_decay: WeightDecay = None, max_batch: MaxBatch = None,
    force: Force = False, replay: Replay = False,
    experiment: Experiment = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, compile: Compile = False,
    channels_last: ChannelsLast = False, no_mlflow: NoMlflow = False, json: Json = False,
) -> None:
    """Warm-start from checkpoint t-1, train on the data plus shards 1..t, save checkpoint t.
    --epochs, --lr, ... change this round's settings only (left out: the experiment's;
    recorded; --replay uses them)."""
    from icl_cli.config import TrainChanges
    from icl_cli.finished import answer

    with user_errors():
        changes = TrainChanges(epochs=epochs, real_epochs=real_epochs, lr=lr,
                               pn_weight=pn_weight, pn_weighting=pn_weighting,
                               pn_recency=pn_recency, clip_grad=clip_grad,
                               weight_decay=weight_decay, max_batch=max_batch)
        r = None if force or replay else answer("reclassify", workspace, experiment,
                                                t=round_, changes=changes, amp=amp,
                                                compile=compile,
                                                channels_last=channels_last, device=device)
        if r is None:  # not finished yet: the step (torch) runs
            from icl_cli.steps.reclassify import train_round

            r = train_round(open_store(workspace), experiment, round_,
                            runtime(device, threads, amp, no_mlflow, compile=compile,
                                    channels_last=channels_last), force=force,
                            replay=replay, changes=changes)
    if json:
        ui.emit_json(r)
        raise typer.Exit(4 if replay and not r.replay_match else 0)
    if replay:
        replay_verdict(f"round {r.round}", r.replay_match, r.replay_note, r.replay_drift)
    if r.reused:
        ui.note(f"round {r.round} already reclassified from the same inputs")
    ui.table(f"'{r.experiment}' round {r.round} reclassify",
             ["epoch", "loss", "real loss", "pn loss", "samples", "seconds"],
             [[e["epoch"], f"{e['loss']:.4f}", f"{e['real_loss']:.4f}", f"{e['pn_loss']:.4f}",
               e["samples"], f"{e['seconds']:.1f}"] for e in r.epochs])


STEP_SHORT = {"synthesize": "synth", "reclassify": "reclass", "evaluate": "eval"}
Experiments = Annotated[list[str] | None, typer.Option(
    "--experiment", "-e", metavar="NAME", help="Experiment name; give -e several times to "
    "run several experiments, each in its own process, with a live table on stderr "
    "(default: the only one, or the latest).")]


@app.command()
def run(
    rounds: Annotated[int, typer.Option(help="Run rounds 1..T (T at most 1,000).",
                                        callback=at_most("--rounds", MAX_ROUNDS))],
    count: Count = None,
    epochs: Epochs = None, real_epochs: RealEpochs = None, lr: Lr = None,
    pn_weight: PnWeight = None, pn_weighting: PnWeighting = None,
    pn_recency: PnRecency = None,
    clip_grad: ClipGrad = None, weight_decay: WeightDecay = None,
    max_batch: MaxBatch = None,
    parallel: Annotated[int, typer.Option(
        help="With several -e: how many experiments run at once (each with --threads; on "
        "this machine at most 4 per core).", callback=bounded("--parallel"))]
    = 1,
    executor: Annotated[str | None, typer.Option(
        help="With several -e: run them as one submitit job array, on 'slurm' or 'local' "
        "(subprocesses, the same path); the workspace must be on storage every node sees.")]
    = None,
    executor_param: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE for submitit's AutoExecutor (repeatable), e.g. slurm_partition=gpu, "
        "timeout_min=240, gpus_per_node=1.")] = None,
    recover: Annotated[int, typer.Option(
        "--recover", metavar="N", help="When a round's training diverges (its loss stops "
        "being finite), train the round again from checkpoint t-1, at most N times (0 to "
        "10): first at half the learning rate, then halved again with the gradient "
        "clipped at 10 (--clip-grad 10). Each attempt is recorded (step log, MLflow, `icl "
        "report`: recovered rounds); 0: a divergence stops the run.")] = 0,
    experiment: Experiments = None, workspace: Workspace = None, device: Device = "auto",
    threads: Threads = None, amp: Amp = False, compile: Compile = False,
    channels_last: ChannelsLast = False, no_mlflow: NoMlflow = False, json: Json = False,
    progress_fd: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """The whole loop; resumes from the last completed step after an interrupt. --count,
    --epochs, --lr, ... apply to the rounds this call synthesizes and reclassifies (left
    out: the experiment's). Several -e run side by side (--parallel N at a time); a failing
    one does not stop the others, and the exit code is then the first failure's."""
    from icl_cli.config import SamplerChanges, TrainChanges

    with user_errors():
        sampler = SamplerChanges(count=count)
        train = TrainChanges(epochs=epochs, real_epochs=real_epochs, lr=lr,
                             pn_weight=pn_weight, pn_weighting=pn_weighting,
                             pn_recency=pn_recency, clip_grad=clip_grad,
                             weight_decay=weight_decay, max_batch=max_batch)
        if not 0 <= recover <= RECOVER_LIMIT:
            raise fail(f"--recover must be in 0..{RECOVER_LIMIT}, got {recover}", 3)
        names = list(dict.fromkeys(experiment or []))  # in order, each once
        if len(names) > 1 and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
            # Each rank would start its own processes, one per experiment: refused.
            raise fail("under torchrun `icl run` runs one experiment on every rank: give -e "
                       "once (start one torchrun per experiment, or run several without "
                       "torchrun: `icl run -e A -e B --parallel N`)", 3)
        if len(names) > 1:
            if parallel < 1:
                raise fail(f"--parallel must be >= 1, got {parallel}", 3)
            at_once = min(parallel, len(names))
            if executor != "slurm" and at_once > THREADS_PER_CORE * cores():
                raise fail(f"--parallel {parallel} would run {at_once} processes at once on "
                           f"this machine's {cores()} cores (at most {THREADS_PER_CORE} per "
                           f"core: {THREADS_PER_CORE * cores()})", 3)
            return _run_many(names, rounds, parallel, workspace, json, sampler, train,
                             (executor, executor_param), device=device, threads=threads,
                             amp=amp, compile=compile, channels_last=channels_last,
                             no_mlflow=no_mlflow, recover=recover or None)
        if executor is not None:
            raise fail("--executor runs several experiments: give two or more -e", 3)
        from icl_cli.steps.run import run_rounds

        store = open_store(workspace)
        name = store.experiment(names[0] if names else None).name
        settings = runtime(device, threads, amp, no_mlflow, compile=compile,
                           channels_last=channels_last)
        watch = _retry_notes
        if progress_fd is not None:  # a child of `icl run -e A -e B`: report to the parent
            from icl_cli.cli.lanes import EventWriter, die_with_parent

            die_with_parent()
            events = EventWriter.to_fd(progress_fd)
            settings, watch = replace(settings, progress=events), events.watch
        rows = run_rounds(store, name, rounds, settings, sampler, train, watch, recover)
    if json:
        return ui.emit_json(rows)
    _run_table(name, ui.to_plain(rows))


RECOVER_LIMIT = 10  # steps.run.RECOVER_LIMIT, without importing torch to check a flag


def _retry_notes(event: dict[str, Any]) -> None:
    """``icl run --recover``'s retries, one line each on stderr."""
    if "retry" in event:
        changed = ", ".join(f"{k}={v:g}" for k, v in event["changes"].items()
                            if k in ("lr", "clip_grad"))
        ui.note(f"round {event['round']} diverged ({event['after']}): training it again "
                f"from checkpoint {event['round'] - 1} with {changed} (retry "
                f"{event['retry']} of {event['of']})")


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

    from icl_cli.cli.lanes import Board, Lane
    from icl_cli.config import ExperimentConfig

    if rounds < 0:
        raise fail(f"--rounds must be >= 0, got {rounds}", 3)
    store = open_store(workspace)
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
    else:  # one submitit job array; its logs under .icl/submitit (icl_cli.cli.cluster)
        from icl_cli.cli import cluster

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
