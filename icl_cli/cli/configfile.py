"""``--config FILE``: a command's options read from a file, TOML (or YAML: ``.yaml``,
``.yml``), before the command parses its line.

A key is an option's long name without its leading dashes, as ``--help`` prints it:
``train-size = 500`` for ``--train-size 500``, ``clamp = false`` for ``--no-clamp``,
``no-mlflow = true`` for ``--no-mlflow``, ``experiment = ["a", "b"]`` for ``-e a -e b``
(``train_size`` reads as ``train-size``). Keys at the top level are shared: every command
reads those it takes and passes over the rest. A table named after a command (``[init]``,
``[run]``, ``[synthesize]``, ...) is read by that command alone and wins over the top
level. A flag on the command line wins over both (so does an environment variable that
sets an option, such as ICL_WORKSPACE).

Whatever command runs, the whole file is checked: a key that no command takes, a table
that is not a command, or a key in a command's table that the command does not take is
refused (:class:`ConfigFileError`, one line naming the closest option).

Example:
    >>> known = {"init": {"seed": Key("seed"), "count": Key("count")},
    ...          "run": {"count": Key("count"), "rounds": Key("rounds")}}
    >>> resolve({"seed": 1, "count": 4, "run": {"rounds": 3}}, "run", known, "f")
    {'count': 4, 'rounds': 3}
    >>> resolve({"sede": 1}, "run", known, "f")
    Traceback (most recent call last):
    ...
    icl_cli.cli.configfile.ConfigFileError: f: no icl command takes 'sede' (did you mean --seed?)
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

YAML_SUFFIXES = (".yaml", ".yml")
NOT_KEYS = ("config", "dump-config", "help")  # options a file cannot set


class ConfigFileError(Exception):
    """A config file that cannot be read or names an option no command takes (one line)."""


class Key(NamedTuple):
    """What a key sets: the command's parameter ``name`` (``train_size``); ``multiple``:
    an option given several times (``-e``), whose one value becomes a list of one."""

    name: str
    multiple: bool = False


def read(path: Path | str) -> dict[str, Any]:
    """The file's keys and tables: TOML through the standard library (``tomllib``, Python
    3.11+; ``tomli`` before that, if installed), YAML through PyYAML for ``.yaml``/``.yml``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigFileError(f"--config {path}: is a folder, not a file") from None
    except OSError as exc:
        raise ConfigFileError(f"--config {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"--config {path}: not a UTF-8 text file") from None
    doc = _yaml(text, path) if path.suffix.lower() in YAML_SUFFIXES else _toml(text, path)
    if not isinstance(doc, dict):
        raise ConfigFileError(f"--config {path}: holds no keys and tables (key = value "
                              "lines, [command] tables)")
    return doc


def _toml(text: str, path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigFileError(f"--config {path}: reading TOML needs Python 3.11 or the "
                                  "tomli package (pip install tomli)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"--config {path}: not valid TOML: {exc}") from None


def _yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ModuleNotFoundError:
        raise ConfigFileError(f"--config {path}: reading YAML needs PyYAML (pip install "
                              "pyyaml); or write the file as TOML") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"--config {path}: not valid YAML: "
                              f"{' '.join(str(exc).split())}") from None


def normal(key: Any) -> str:
    """A file's key as an option's long name: ``train_size`` -> ``train-size``."""
    return str(key).strip().replace("_", "-")


def option_keys(command: Any) -> dict[str, Key]:
    """The keys a click command takes: each option's first long name without its dashes
    (``--no-clamp`` is ``clamp = false``); hidden options and ``NOT_KEYS`` left out."""
    keys: dict[str, Key] = {}
    for param in command.params:
        if getattr(param, "hidden", False) or not getattr(param, "expose_value", True) \
                or getattr(param, "param_type_name", "") != "option":
            continue
        names = [o for o in param.opts if o.startswith("--")]
        if names and names[0][2:] not in NOT_KEYS:
            keys[names[0][2:]] = Key(param.name, bool(getattr(param, "multiple", False)))
    return keys


def resolve(doc: dict[str, Any], command: str, known: dict[str, dict[str, Key]],
            where: str) -> dict[str, Any]:
    """``command``'s defaults from ``doc``, as its parameters' names -> values (Click's
    ``default_map``): the top-level keys it takes, then its own table's. ``known``: every
    command's keys (``option_keys``); the whole of ``doc`` is checked against them."""
    every = {k for keys in known.values() for k in keys}
    top, tables = _split(doc, where)
    for name, table in tables.items():
        if name not in known:
            raise ConfigFileError(f"{where}: [{name}] is not an icl command"
                                  f"{_closest(name, known, '[{}]')}")
        for key in table:
            if key not in known[name]:
                owners = [c for c, keys in known.items() if key in keys]
                elsewhere = (f"; --{key} is an option of icl {owners[0]}: put it in "
                             f"[{owners[0]}] or at the top level") if owners else ""
                raise ConfigFileError(f"{where}: icl {name} takes no --{key} ([{name}] "
                                      f"{key}{_closest(key, known[name], '--{}')}{elsewhere})")
    for key in top:
        if key not in every:
            raise ConfigFileError(f"{where}: no icl command takes '{key}'"
                                  f"{_closest(key, every, '--{}')}")
    mine = known.get(command, {})
    out: dict[str, Any] = {}
    for key, value in [*top.items(), *tables.get(command, {}).items()]:
        if key in mine:
            k = mine[key]
            out[k.name] = [value] if k.multiple and not isinstance(value, list) else value
    return out


def _split(doc: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, dict]]:
    """(top-level keys, tables), every key in its long-name spelling, each once."""
    top: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for raw, value in doc.items():
        if isinstance(value, dict):
            tables[normal(raw)] = _once(value, where, f"[{normal(raw)}] ")
        else:
            top[raw] = value
    return _once(top, where, ""), tables


def _once(values: dict[Any, Any], where: str, table: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw, value in values.items():
        key = normal(raw)
        if key in out:
            raise ConfigFileError(f"{where}: {table}{key} is given twice (as {key} and "
                                  f"{raw})")
        if isinstance(value, dict):
            raise ConfigFileError(f"{where}: {table}{key} holds a table; an option takes "
                                  "a value")
        out[key] = value
    return out


def _closest(key: str, choices: Any, form: str) -> str:
    near = difflib.get_close_matches(key, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {form.format(near[0])}?)" if near else ""


# ------------------------------------------------------------------ writing a file
def toml_value(value: Any) -> str:
    """One value in TOML: a string, a boolean, a number or a list of them.

    Example:
        >>> [toml_value(v) for v in ("a\\"b", True, 3, 0.01, 1e-05, [1, 2])]
        ['"a\\\\"b"', 'true', '3', '0.01', '1e-05', '[1, 2]']
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no TOML form here")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"{value!r} has no TOML form")


def toml_text(tables: dict[str, dict[str, Any]], comments: list[str]) -> str:
    """A config file: ``comments`` (one ``#`` line each), then each table's keys (None
    values left out: a key left out is the option left out)."""
    lines = [f"# {c}".rstrip() for c in comments]
    for name, values in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
