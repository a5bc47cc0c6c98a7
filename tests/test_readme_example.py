"""README.md's "Your own model and data" runs as written: a README whose example breaks
fails this test.

The section's fenced blocks are read from README.md itself. A ``python`` block whose first
line is ``# NAME.py`` is saved as NAME.py in an empty folder; every line of a ``bash`` block
(``\\`` continuations joined, comments dropped) is run there, in order: ``python NAME.py``
runs the file, ``icl ...`` runs icl in this process (the console script's parsing, without
a fresh interpreter and its torch import per command). Any other command fails the test, so
that an example which grows a step is not skipped silently.

What the test changes, and only that: each ``icl`` command also reads ``--config`` of a
file holding ``RUNTIME`` (no MLflow, one thread, CPU, each for the commands that take it:
where a command runs, not what it computes), and the flags in ``SMOKE`` take smaller
values, so the example runs in seconds on a loaded machine.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from store import Store
from tests.kit import ROOT, icl

HEADING = "## Your own model and data"
RUNTIME = 'no-mlflow = true\nthreads = 1\ndevice = "cpu"\n'
SMOKE = {"--train-size": "60", "--val-size": "15", "--init-epochs": "1", "--count": "2",
         "--max-steps": "8"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def section(text: str, heading: str = HEADING) -> str:
    """The README's text from ``heading`` to the next heading of its level."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start:end if end != -1 else None]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def commands(script: str) -> list[list[str]]:
    """A bash block's commands, each as its words: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", script)
    return [words for line in joined.splitlines()
            if (words := shlex.split(line, comments=True))]


def smoke(args: list[str], runtime: Path) -> list[str]:
    """``args`` with the values of ``SMOKE``'s flags replaced, reading ``runtime``."""
    out = list(args)
    for i, word in enumerate(out[:-1]):
        if word in SMOKE:
            out[i + 1] = SMOKE[word]
    return [*out, "--config", str(runtime)]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty current folder; sys.path, the data caches and the modules imported from it
    as they were, afterwards."""
    from icl_cli import data as D
    from icl_cli.steps import common
    from tests.test_user_models import forget_modules_in

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    common._load_cached.cache_clear()
    D._DECODED.clear()
    yield tmp_path
    common._load_cached.cache_clear()
    D._DECODED.clear()
    forget_modules_in(tmp_path)


def test_the_readme_example_of_your_own_model_and_data_runs(folder, tmp_path_factory):
    example = blocks(section((ROOT / "README.md").read_text()))
    files = [code for lang, code in example if lang == "python"]
    scripts = [code for lang, code in example if lang == "bash"]
    assert len(files) == 2 and len(scripts) == 1, example
    for code in files:
        name = re.match(r"# (\S+\.py)\n", code)
        assert name, f"a python block of the example does not start with '# NAME.py': {code}"
        (folder / name.group(1)).write_text(code)
    runtime = tmp_path_factory.mktemp("runtime") / "runtime.toml"
    runtime.write_text(RUNTIME)
    ran = []
    for words in commands(scripts[0]):
        if words[:1] == ["python"] and len(words) == 2:
            runpy.run_path(str(folder / words[1]), run_name="__main__")
        elif words[:1] == ["icl"]:
            icl(*smoke(words[1:], runtime))
        else:
            pytest.fail(f"the README's example runs {shlex.join(words)!r}, which this test "
                        "does not know how to run: teach it")
        ran.append(words[:2])
    assert ran == [["python", "make_toy.py"], ["icl", "init"], ["icl", "run"],
                   ["icl", "report"]]
    # what the example says it makes: the network and the folder asked for, two rounds
    with Store.open(folder) as st:
        exp = st.experiment("mine")
        rounds = sorted(c.round for c in st.checkpoints("mine"))
    assert exp.config["model"]["arch"] == "my_nets:small_cnn"
    assert exp.config["model"]["source"].startswith("my_nets.py sha256:")
    data = exp.config["data"]
    assert (data["dataset"], data["image_size"]) == ("imagefolder", 16)
    assert Path(data["root"]) == folder.resolve() / "toy"
    assert rounds == [0, 1, 2]
