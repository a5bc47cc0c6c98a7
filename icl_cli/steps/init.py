"""``icl init``: create an experiment and its round 0 (C_0), or copy C_0 from another."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icl_cli import distributed
from icl_cli.config import ExperimentConfig, check_sampler_fits
from icl_cli.steps.common import (
    Runtime,
    StepError,
    dataset,
    experiment_data,
    join_ranks,
    new_model,
    workspace_identity,
)
from icl_cli.steps.evaluate import Evaluation, copy_parent_evaluations, evaluate_round
from icl_cli.steps.reclassify import train_round
from icl_cli.steps.report import errors_by_round

if TYPE_CHECKING:
    from store import Store

# What a paired experiment must share with the one it starts from (SPEC, "Fair comparisons").
SHARED = ("data", "model", "seed", "init_epochs")


@dataclass(frozen=True)
class InitResult:
    experiment: str
    parent: str | None
    reused: bool
    evaluations: list[Evaluation]
    config: dict[str, Any]


def parse_from(spec: str, flag: str = "--from") -> tuple[str, int]:
    """'baseline:0' -> ('baseline', 0); a bare name means round 0. ``flag``: the option
    the spec came from, named in the error (``--from``, ``--against``)."""
    name, _, round_ = spec.partition(":")
    try:
        return name, int(round_ or 0)
    except ValueError:
        raise StepError(f"{flag} takes EXPERIMENT:ROUND (e.g. baseline:0), got {spec!r}"
                        ) from None


def compose(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults (or ``base``), with nested overrides such as {"train": {"epochs": 3}}."""
    merged = dict(base or ExperimentConfig().to_dict())
    for key, value in overrides.items():
        if isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    if merged.get("method") == "icl-noise":
        merged["sampler"] = {**merged.get("sampler", {}), "kind": "noise"}
    try:  # every field checks itself (range, choice, finite), naming its flag
        cfg = ExperimentConfig.from_dict(merged)
    except TypeError as exc:
        raise StepError(str(exc)) from None
    check_arch(cfg.model.arch)
    return cfg


def check_arch(arch: str) -> None:
    """The network's name: built-in, ``module:factory``, installed or ``timm:NAME``, found
    and imported (which needs torch, so not in ``ModelConfig`` itself: reading a config
    must stay torch-free)."""
    from icl_cli.models import check_spec

    check_spec(arch)


def with_checked_model(cfg: ExperimentConfig, data) -> ExperimentConfig:
    """``cfg`` with its network built once for ``data`` and checked (a factory that fails
    or gives the wrong shape: one line, before anything is written) and a user's
    network's code recorded (``icl_cli.models.checked_model``)."""
    from icl_cli.models import checked_model

    return cfg.replace(model=checked_model(cfg.model, data.shape, data.num_classes))


def init_experiment(open_store: Callable[[], Any], name: str, overrides: dict[str, Any],
                    runtime: Runtime, from_: str | None = None) -> InitResult:
    """Record the experiment's config and train C_0 (or copy it from ``from_``).

    ``open_store()`` gives the workspace; it is called only once the request is known to be
    valid (name, options, data, ``--from`` source), so a mistake never creates or changes
    a workspace.
    """
    from store import validate_name
    from store.workspace import disk_full_as_one_line

    validate_name(name)
    runtime.apply()  # --device cuda without a GPU, --threads 0: refused before any write
    # Under torchrun C_0 trains on every rank (DDP); first the ranks agree on what they
    # run (join_ranks), before any collective.
    ranks = distributed.from_env().active
    if from_:
        parent_name, parent_round = parse_from(from_)
        clash = [k for k in SHARED if k in overrides]
        if clash:
            raise StepError(f"--from {from_} shares {', '.join(clash)} with '{parent_name}'; "
                            "drop those options to keep the comparison paired")
        with disk_full_as_one_line(None):
            store = open_store()  # an existing workspace: every rank opens it
        parent = store.experiment(parent_name)
        source = store.checkpoint(parent.name, parent_round)
        if source is None:
            raise StepError(f"'{parent.name}' has no checkpoint for round {parent_round}")
        if ranks:
            join_ranks(runtime, lambda: {
                "step": "init", "workspace": workspace_identity(store), "experiment": name,
                "settings": {"overrides": overrides, "from": from_},
                "inputs": {"parent": parent.config_hash, "source": source.sha256,
                           "data": parent.data_fingerprint}})
        store.load_checkpoint(source)  # hash-checked and parsed before anything is recorded
        cfg = compose(overrides, base=parent.config)
        cfg = cfg.replace(**{k: getattr(ExperimentConfig.from_dict(parent.config), k)
                             for k in SHARED})
        data = experiment_data(parent, store)  # the parent's images, checked against its record
        cfg = with_checked_model(cfg, data)
        _check_count(cfg, data, runtime)
    else:
        parent = parent_round = None
        cfg = compose(overrides)
        data = dataset(cfg)  # a missing or broken data folder fails here, before any write
        cfg = with_checked_model(cfg, data)
        _check_count(cfg, data, runtime)
        if ranks:  # the workspace may not exist yet: rank 0 makes it once they agree
            join_ranks(runtime, lambda: {
                "step": "init", "experiment": name, "settings": {"config": cfg.to_dict()},
                "inputs": {"data": data.fingerprint}})
        with disk_full_as_one_line(None):
            store = _opened(open_store)
    # A full disk on the way is one line (DiskFull); the next `icl init` finishes the job.
    with disk_full_as_one_line(store.root):
        dataset(cfg, store)  # a decoded image folder kept in the workspace for later steps
        return _create(store, name, cfg, data, parent, parent_round, runtime, from_)


def _opened(open_store: Callable[[], Any]):
    """The workspace: made or opened by rank 0 first, then by the other ranks (one
    process: simply ``open_store()``)."""
    store = distributed.from_main(open_store, send=lambda s: None)
    return open_store() if store is None else store


def _check_count(cfg: ExperimentConfig, data, runtime: Runtime) -> None:
    """A ``--count`` whose synthesis batch cannot fit in memory: refused before any work."""
    if cfg.method != "baseline":
        from icl_cli.steps.draw import BLOCK

        check_sampler_fits(cfg.sampler, lambda: new_model(cfg, data), data.num_classes,
                           data.shape, runtime.torch_device(), cfg.model.arch, BLOCK)


def _create(store: Store, name: str, cfg: ExperimentConfig, data, parent, parent_round,
            runtime: Runtime, from_: str | None) -> InitResult:
    # Under torchrun rank 0 records and evaluates (``from_main``); every rank trains C_0.
    same = [e for e in store.experiments() if e.name == name]
    existed = bool(same)
    # An experiment recorded by an older icl lacks the settings added since: the same
    # experiment when its settings, read with today's defaults, are these.
    config = (same[0].config if same and ExperimentConfig.from_dict(same[0].config) == cfg
              else cfg.to_dict())
    exp = distributed.from_main(lambda: store.create_experiment(
        name, config, parent=parent.name if parent else None,
        parent_round=parent_round, data_fingerprint=data.fingerprint))
    # C_0: trained from scratch, or copied from the parent (see train_round). An init that
    # fails before C_0 exists (diverged, interrupted) leaves no experiment behind, so the
    # same name can be tried again with other settings.
    try:
        reused = train_round(store, exp.name, 0, runtime).reused
    except BaseException:
        if (distributed.current().main and not existed
                and store.checkpoint(exp.name, 0) is None):
            store.forget_experiment(exp.name)
        raise
    if reused and "test" in errors_by_round(store, exp.name).get(0, {}):
        distributed.from_main(lambda: _track(store, exp.name, runtime))
        return InitResult(exp.name, from_, True, [], exp.config)
    evaluations = distributed.from_main(
        lambda: _evaluate(store, exp.name, parent, parent_round, runtime))
    return InitResult(exp.name, from_, False, evaluations, exp.config)


def _evaluate(store: Store, name: str, parent, parent_round, runtime: Runtime) -> list[Evaluation]:
    """C_0's evaluations (copied from the parent's C_0 when it is the same checkpoint; a
    C_0 saved by an init cut short before its evaluation is evaluated now), then MLflow."""
    evaluations = None
    if parent is not None:
        evaluations = copy_parent_evaluations(store, name, parent.name, parent_round, runtime)
    if evaluations is None:
        evaluations = evaluate_round(store, name, 0, runtime)
    _track(store, name, runtime)
    return evaluations


def _track(store: Store, name: str, runtime: Runtime) -> None:
    """The config as MLflow params, and whatever else of the catalog MLflow missed (an
    init cut short by a full disk, a lost ``mlflow.db``): best effort, never a failure."""
    if runtime.mlflow:
        from store.tracking import sync_from_catalog

        store.tracker(name).log_params(store.experiment(name).config)
        sync_from_catalog(store, [name])
