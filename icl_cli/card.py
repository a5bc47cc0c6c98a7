"""Reproducibility cards (``icl report --card``): per experiment, one JSON document and one
Markdown page that let anyone regenerate its numbers.

A card holds the resolved config and its hash, the data (dataset, folder, fingerprint), the
seeds, every recorded step with the ``icl`` command that reproduces it and where it ran
(device, CPU/GPU model, icl and torch versions, determinism settings: "not recorded" for
steps made before icl kept them), the sha256 of every checkpoint and shard, the results
table, and the commands that rebuild the experiment in a fresh workspace (``commands``),
its parent's first when it was started ``--from`` another.

Reads the catalog only: no torch (``icl report`` stays fast).

Two cards of experiments that differ in one setting differ only where that setting shows
(the config, the steps that record it, the commands that set it) and in the fields of
``OUTCOMES`` (what an experiment's run produces or is named: names, paths, dates,
timings, hashes, errors); ``comparable(card)`` is a card without them.

Example:
    >>> card = experiment_card(store, "icl")                          # doctest: +SKIP
    >>> card["commands"][0]
    'icl init -e icl --method icl --dataset mnist-embedded ... --seed 0 --data-seed 0'
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from icl_cli.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SamplerChanges,
    SamplerConfig,
    TrainChanges,
    TrainConfig,
)

if TYPE_CHECKING:
    from pathlib import Path

    from store import Store

CARD_FORMAT = 1
NOT_RECORDED = "not recorded"

INIT_SETTINGS = [
    (None, "method"), ("data", "dataset"), ("data", "root"), ("data", "image_size"),
    ("data", "download"), ("data", "train_size"), ("data", "val_size"), ("data", "augment"),
    ("model", "mode"), ("model", "arch"), (None, "init_epochs"),
    *(("train", f) for f in ("epochs", "real_epochs", "batch_size", "lr", "decay_round",
                             "pn_weight", "pn_weighting", "pn_recency", "clip_grad",
                             "weight_decay", "max_batch")),
    *(("sampler", f) for f in ("count", "max_steps", "lr", "reference_std", "stop_rule",
                               "langevin_std", "clamp")),
    (None, "seed"), ("data", "seed")]
"""What ``icl init`` sets, in its order: (group, field) of ExperimentConfig (group None:
the top level); the option is the field's own flag (``init_option``)."""
_SHARED = {"data", "model", "seed", "init_epochs"}  # steps.init.SHARED: taken from --from
_RECORDED_BY_INIT = {("model", "source")}  # what icl init records itself (the code's hash)
_CLASSES = {None: ExperimentConfig, "data": DataConfig, "model": ModelConfig,
            "train": TrainConfig, "sampler": SamplerConfig}
_ONLY_ON = {("data", "download")}  # a flag with no --no- form

OUTCOMES = (
    "experiment", "written_at", "workspace", "config_hash", "parent.experiment",
    "steps.*.started_at", "steps.*.finished_at", "steps.*.seconds", "steps.*.message",
    "steps.*.config.inputs", "steps.*.config.source", "steps.*.config.plan.source",
    "steps.*.config.path", "steps.*.config.sha256", "steps.*.config.seconds",
    "checkpoints", "shards", "results",
)
"""The card's fields that a run produces or names (wildcard ``*``: any list index or
key), left out by ``comparable``: the experiment's name and workspace, when the card was
written, the config's hash, each step's times, duration, message and input hashes, the
checkpoints' and shards' paths and sha256, and the errors."""


# --------------------------------------------------------------------- commands
def _value(v: Any) -> str:
    return shlex.quote(str(v))


def init_option(group: str | None, name: str) -> str:
    """The ``icl init`` option that sets ``group.name``: ``("sampler", "lr")`` ->
    ``--sampler-lr``, ``("data", "seed")`` -> ``--data-seed`` (``_Config.flag``)."""
    return _CLASSES[group].flag(name)


def _flag(group: str | None, name: str, value: Any) -> list[str]:
    """The command-line words that set ``group.name`` to ``value`` (none for None)."""
    flag = init_option(group, name)
    if value is None:
        return []
    if isinstance(value, bool):
        if (group, name) in _ONLY_ON:
            return [flag] if value else []
        return [flag if value else "--no-" + flag[2:]]
    return [flag, _value(value)]


def _get(cfg: dict, group: str | None, name: str) -> Any:
    return cfg.get(name) if group is None else cfg.get(group, {}).get(name)


def init_command(name: str, config: dict, parent: str | None = None) -> str:
    """The ``icl init`` that records ``config`` as experiment ``name`` (every setting
    given, so today's defaults do not matter); ``parent`` (``EXP:ROUND``): started
    ``--from`` it, which sets the shared settings (data, model, seeds, C_0's epochs)."""
    words = ["icl", "init", "-e", _value(name)]
    if parent:
        words += ["--from", _value(parent)]
    for group, field in INIT_SETTINGS:
        if parent and (group or field) in _SHARED:
            continue
        words += _flag(group, field, _get(config, group, field))
    return " ".join(words)


def not_settable(config: dict) -> list[str]:
    """The settings of ``config`` no ``icl init`` option sets, where they differ from
    icl's defaults (``train.momentum=0.5``): the Python API sets them (``icl_cli.api``).
    """
    settable = {(g, f) for g, f in INIT_SETTINGS} | _RECORDED_BY_INIT
    default = ExperimentConfig(method=config.get("method", "icl")).to_dict()
    if config.get("method") == "icl-noise":
        default["sampler"]["kind"] = "noise"
    out = []
    for group in ("data", "model", "train", "sampler"):
        for field, value in (config.get(group) or {}).items():
            if (group, field) not in settable and value != default[group].get(field):
                out.append(f"{group}.{field}={value}")
    return out


def _changes(kind: type, target: type, used: dict, own: Any) -> list[str]:
    """The flags of a round's settings ``used`` that differ from the experiment's
    ``own`` (only those the round's options can change: ``kind``'s fields)."""
    words = []
    for f in dataclasses.fields(kind):
        if f.name in used and used[f.name] != getattr(own, f.name):
            group = "train" if target is TrainConfig else "sampler"
            words += _flag(group, f.name, used[f.name])
    return words


def step_command(step, name: str, cfg: ExperimentConfig, config: dict, parent: str | None,
                 again: bool) -> str | None:
    """The ``icl`` command that reproduces ``step`` (a StepInfo of experiment ``name``);
    ``again``: an earlier step made the same round's artefact (so the command needs
    ``--force``). None for a step no command runs alone."""
    c, t = step.config or {}, step.round
    base = ["-e", _value(name), "--round", str(t)]
    force = ["--force"] if again else []
    if step.name == "reclassify" and t == 0:
        return init_command(name, config)
    if step.name == "init":
        return init_command(name, config, c.get("from") or parent)
    if step.name in ("synthesize", "synthesize-part", "replay-synthesize"):
        sampler = c.get("sampler") or (c.get("plan") or {}).get("sampler") or {}
        words = ["icl", "synthesize", *base,
                 *_changes(SamplerChanges, SamplerConfig, sampler, cfg.sampler)]
        words += ["--amp"] if sampler.get("amp") else []
        if step.name == "replay-synthesize":
            return " ".join(words + ["--replay"])
        if step.name == "synthesize-part":
            words += ["--part", "/".join(map(str, c.get("part", [])))]
        return " ".join(words + force)
    if step.name in ("reclassify", "replay-reclassify"):
        words = ["icl", "reclassify", *base,
                 *_changes(TrainChanges, TrainConfig, c.get("train") or {}, cfg.train)]
        words += ["--amp"] if (c.get("inputs") or {}).get("amp") else []
        return " ".join(words + (["--replay"] if step.name.startswith("replay") else force))
    return None


def _reproducing(store: Store, exp, cfg: ExperimentConfig, steps: list, up_to: int | None
                 ) -> tuple[list[dict], list[str]]:
    """(each step as the card lists it, the commands that rebuild the experiment's rounds
    up to ``up_to``, None: all): its successful steps in order, replays and parts left
    out (a round drawn in parts is drawn at once, bit for bit the same), then an
    evaluation of each round."""
    parent = f"{exp.parent}:{exp.parent_round or 0}" if exp.parent else None
    listed, commands, made = [], [], set()
    for s in steps:
        key = ("synthesize" if s.name.startswith("synthesize") else s.name, s.round)
        again = key in made and s.name != "synthesize-part"
        command = step_command(s, exp.name, cfg, exp.config, parent, again)
        listed.append(_step_entry(s, command))
        if s.state != "ok" or command is None or s.name.startswith("replay") or (
                s.name == "synthesize-part") or (up_to is not None and s.round > up_to):
            continue
        made.add(key)
        commands.append(command)
    from icl_cli.steps.report import errors_by_round

    for t in sorted(errors_by_round(store, exp.name)):
        if up_to is None or t <= up_to:
            commands.append(f"icl evaluate -e {_value(exp.name)} --round {t}")
    return listed, commands


def _step_entry(s, command: str | None) -> dict:
    return {"name": s.name, "round": s.round, "state": s.state,
            "started_at": _time(s.started_at), "finished_at": _time(s.finished_at),
            "seconds": s.seconds, "message": s.message, "command": command,
            "config": s.config or {}, "environment": s.environment or NOT_RECORDED}


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


# ------------------------------------------------------------------------ card
def experiment_card(store: Store, name: str, rows: list | None = None) -> dict[str, Any]:
    """Experiment ``name``'s card as a plain JSON-able dict (module docstring); ``rows``:
    ``icl report``'s rows, when the caller has them (``steps.report.experiment_rows``)."""
    from icl_cli import __version__
    from icl_cli.steps.report import experiment_rows

    exp = store.experiment(name)
    cfg = ExperimentConfig.from_dict(exp.config)
    steps = store.steps(exp.name)
    listed, commands = _reproducing(store, exp, cfg, steps, None)
    chain, at = [], exp
    seen = {exp.name}
    while at.parent and at.parent not in seen:  # the parents' rounds it starts from
        parent = store.experiment(at.parent)
        seen.add(parent.name)
        pcfg = ExperimentConfig.from_dict(parent.config)
        chain = _reproducing(store, parent, pcfg, store.steps(parent.name),
                             at.parent_round or 0)[1] + chain
        at = parent
    row = next(r for r in rows or experiment_rows(store) if r.experiment == exp.name)
    environments = [s.environment for s in steps if s.environment]
    return {
        "card": CARD_FORMAT,
        "experiment": exp.name,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workspace": str(store.root),
        "written_by": {"icl": __version__, "torch": _installed("torch")},
        "method": cfg.method,
        "config": cfg.to_dict(),
        "config_hash": exp.config_hash,
        "not_settable_by_init": not_settable(cfg.to_dict()),
        "parent": None if not exp.parent else {"experiment": exp.parent,
                                              "round": exp.parent_round or 0},
        "data": {"dataset": cfg.data.dataset, "root": cfg.data.root,
                 "fingerprint": exp.data_fingerprint or NOT_RECORDED,
                 "train_size": cfg.data.train_size, "val_size": cfg.data.val_size,
                 "image_size": cfg.data.image_size, "augment": cfg.data.augment},
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data.seed,
                  "shards": [[s.round, s.version, s.seed] for s in store.shards(exp.name)]},
        "versions": {"icl": _distinct(e.get("icl") for e in environments),
                     "torch": _distinct(e.get("torch") for e in environments)},
        "devices": _distinct(f"{e.get('device')}: {e.get('device_model')}"
                             for e in environments),
        "determinism": _distinct_dicts(e.get("determinism") for e in environments),
        "steps": listed,
        "commands": chain + commands,
        "checkpoints": [{"round": c.round, "path": store.rel(c.path), "sha256": c.sha256}
                        for c in store.checkpoints(exp.name)],
        "shards": [{"round": s.round, "version": s.version, "active": s.active,
                    "path": store.rel(s.path), "sha256": s.sha256, "count": s.count}
                   for s in store.shards(exp.name)],
        "results": {
            "rounds": [{"round": t, "test_error": e.get("test"), "val_error": e.get("val")}
                       for t, e in sorted(row.errors.items())],
            "last_round": row.rounds, "test_error_last": row.test_error_last,
            "best_val_round": row.best_val_round,
            "test_error_best_val": row.test_error_best_val},
    }


def _installed(package: str) -> str | None:
    """An installed package's version, without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _distinct(values) -> list:
    return list(dict.fromkeys(v for v in values if v is not None))


def _distinct_dicts(values) -> list[dict]:
    seen = {json.dumps(v, sort_keys=True): v for v in values if v}
    return list(seen.values())


def write_cards(store: Store, names: list[str] | None = None, rows: list | None = None
                ) -> list[tuple[Path, Path]]:
    """Write the card of each experiment (default: every one) as ``cards/<name>.md`` and
    ``cards/<name>.json`` in the workspace; the (md, json) paths. ``rows``: as for
    ``experiment_card``."""
    from icl_cli.steps.report import experiment_rows

    rows = rows if rows is not None else experiment_rows(store)
    out = []
    for name in names if names is not None else [e.name for e in store.experiments()]:
        card = experiment_card(store, name, rows)
        md = store.write_card(store.card_path(name, "md"), card_markdown(card))
        js = store.write_card(store.card_path(name, "json"),
                              json.dumps(card, indent=2, default=str) + "\n")
        out.append((md, js))
    return out


# -------------------------------------------------------------------- compare
def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1, 2]}} -> {"a.b.0": 1, "a.b.1": 2}."""
    if isinstance(doc, dict) and doc:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(doc, list) and doc:
        out = {}
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: doc}


def _outcome(path: str) -> bool:
    parts = path.split(".")
    for pattern in OUTCOMES:
        want = pattern.split(".")
        if len(parts) >= len(want) and all(w in ("*", p) for w, p in zip(want, parts,
                                                                           strict=False)):
            return True
    return False


def comparable(card: dict) -> dict[str, Any]:
    """The card's settings, flattened (``flatten``), without ``OUTCOMES``, the
    experiment's own name written ``<experiment>`` wherever it shows (commands): what two
    experiments of the same settings share."""
    name = card["experiment"]
    out = {}
    for path, value in flatten(card).items():
        if _outcome(path):
            continue
        if isinstance(value, str) and value.startswith("icl "):
            value = value.replace(f"-e {shlex.quote(name)} ", "-e <experiment> ")
        out[path] = value
    return out


# ------------------------------------------------------------------- markdown
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def card_markdown(card: dict) -> str:
    """The card as a Markdown page (the JSON holds the same, complete)."""
    c = card["config"]
    lines = [f"# Reproducibility card: {card['experiment']}", "",
             f"- method: {card['method']}, network: {c['model']['arch']} ({c['model']['mode']})",
             f"- config hash: `{card['config_hash']}`",
             f"- data: {card['data']['dataset']}"
             + (f" from `{card['data']['root']}`" if card["data"]["root"] else "")
             + f", fingerprint `{card['data']['fingerprint']}`",
             f"- seeds: seed {card['seeds']['seed']}, data seed {card['seeds']['data_seed']}"
             + "".join(f"; round {t} v{v} synthesis seed {s}"
                       for t, v, s in card["seeds"]["shards"]),
             f"- icl: {', '.join(card['versions']['icl']) or NOT_RECORDED}; torch: "
             f"{', '.join(card['versions']['torch']) or NOT_RECORDED}",
             f"- devices: {'; '.join(card['devices']) or NOT_RECORDED}",
             f"- card written {card['written_at']} by icl {card['written_by']['icl']} "
             f"(torch {card['written_by']['torch']}) in `{card['workspace']}`"]
    if card["parent"]:
        p = card["parent"]
        lines.append(f"- started from `{p['experiment']}` round {p['round']} (paired: same "
                     "data, network, seeds and C_0)")
    lines += ["", "## Reproduce", "",
              "In a fresh folder (or with `-w FOLDER`); add `--device`, `--threads`, "
              "`--no-mlflow` as wanted: they change speed, not the recorded settings.", "",
              "```bash", *card["commands"], "```"]
    if card["not_settable_by_init"]:
        lines += ["", "Settings no `icl init` option sets: "
                  + ", ".join(f"`{s}`" for s in card["not_settable_by_init"])
                  + "; the Python API records the whole config below: `icl_cli.api."
                  f"Workspace(FOLDER).init({card['experiment']!r}, config=CONFIG)`."]
    lines += ["", "## Results (error %)", "", "| round | test | val |", "| --- | --- | --- |",
              *(f"| {r['round']} | {_pct(r['test_error'])} | {_pct(r['val_error'])} |"
                for r in card["results"]["rounds"])]
    best = card["results"]["best_val_round"]
    if best is not None:
        lines += ["", f"Best round on validation: {best} (test "
                  f"{_pct(card['results']['test_error_best_val'])} %)."]
    lines += ["", "## Steps", "",
              "| # | step | round | state | seconds | device | device model | icl | torch | "
              "command |", "|" + " --- |" * 10]
    for i, s in enumerate(card["steps"], 1):
        env = s["environment"]
        where = [NOT_RECORDED] * 4 if not isinstance(env, dict) else [
            env.get("device"), env.get("device_model"), env.get("icl"), env.get("torch")]
        secs = "-" if s["seconds"] is None else f"{s['seconds']:.1f}"
        cmd = f"`{s['command']}`" if s["command"] else "-"
        lines.append(f"| {i} | {s['name']} | {s['round']} | {s['state']} | {secs} | "
                     + " | ".join(str(w) for w in where) + f" | {cmd} |")
    lines += ["", "## Determinism", ""]
    if card["determinism"]:
        for d in card["determinism"]:
            lines.append("- " + ", ".join(f"{k}={v}" for k, v in d.items()))
    else:
        lines.append(f"- {NOT_RECORDED}")
    lines += ["- every random stream (subset, weights, batch order, sampler) is derived "
              "from the seeds above; `icl synthesize --replay` and `icl reclassify --replay` "
              "check a step bit for bit on the same device and threads"]
    lines += ["", "## Artefacts (sha256)", "", "| file | round | sha256 |", "| --- | --- | --- |",
              *(f"| `{a['path']}` | {a['round']} | `{a['sha256']}` |"
                for a in card["checkpoints"] + card["shards"])]
    lines += ["", "## Config", "", "```json", json.dumps(c, indent=2), "```", ""]
    return "\n".join(lines)
