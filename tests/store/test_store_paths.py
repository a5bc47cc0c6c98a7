"""Nothing is followed or written out of the workspace, and a workspace path may hold any
printable character.

A link planted where icl keeps its own files (an experiment's ``shards/`` leading to
another folder, a shard leading to ``/dev/zero``, a lock file, ``.icl/references/``...) is
never written, deleted or read through: the store refuses it in one line (exit 4), and
``icl verify`` (with ``--repair`` or ``--rebuild`` too) names it as a finding instead of
failing with an internal error. URLs built from the workspace's path (the SQLite catalog,
the MLflow tracking URI) are escaped, so a ``?`` or ``#`` in it keeps every file inside."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store import IntegrityError, Store, StoreError
from tests import kit
from tests.kit import Result

ROOT = Path(__file__).resolve().parents[2]


def _state(seed: int) -> dict:
    return {"model": {"w": torch.full((2,), float(seed))}, "config": {"method": "icl"}}


def _workspace(root: Path, make_arrays, attrs) -> Path:
    """A workspace at ``root`` whose experiment 'icl' has C_0 and the shard of round 1."""
    with Store.init(root) as st:
        st.create_experiment("icl", {"method": "icl", "seed": 0})
        c0 = st.save_checkpoint("icl", 0, _state(0))
        with st.step("icl", "synthesize", 1, {"count": 2}):
            st.write_shard("icl", 1, make_arrays(), {**attrs, "source_checkpoint": c0.sha256})
        return st.root


def icl(*argv) -> Result:
    """``icl ARGV`` in this process, without ``ICL_DEBUG`` (tracebacks off, as a user's)."""
    return kit.icl(*argv, code=None, env={"ICL_DEBUG": None})


def icl_process(*argv, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m icl_cli ARGV`` in a fresh process, without ``ICL_DEBUG``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("ICL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "icl_cli", *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _link_out(link: Path, target: Path) -> None:
    """Replace ``link`` (a folder or file of the workspace) by a link to ``target``, with
    what it held moved there."""
    if link.exists():
        shutil.move(str(link), str(target))
    link.symlink_to(target, target_is_directory=target.is_dir())


# ---------------------------------------------------------------- the store refuses
def test_a_shard_is_never_written_through_a_link_out_of_the_workspace(tmp_path, make_arrays,
                                                                       attrs):
    ws = _workspace(tmp_path / "ws", make_arrays, attrs)
    out = tmp_path / "elsewhere"
    _link_out(ws / "experiments" / "icl" / "shards", out)
    before = _files(out)
    with Store.open(ws) as st:
        with pytest.raises(IntegrityError, match=r"^experiments/icl/shards is a link that "
                           r"leaves the workspace \(to .*elsewhere\)"):
            st.write_shard("icl", 1, make_arrays(), attrs)
        assert [s.version for s in st.shards("icl")] == [1]  # nothing recorded
    assert _files(out) == before  # nothing written there


def test_checkpoints_parts_figures_locks_and_references_refuse_a_link_out(tmp_path,
                                                                          make_arrays, attrs):
    from store.references import save_reference

    ws = _workspace(tmp_path / "ws", make_arrays, attrs)
    exp = ws / "experiments" / "icl"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("checkpoints", "figures"):
        _link_out(exp / name, tmp_path / f"out-{name}")
    lock = ws / ".icl" / "locks" / "icl.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    (tmp_path / "out-refs").mkdir()
    (ws / ".icl" / "references").symlink_to(tmp_path / "out-refs")
    outside = {n: _files(tmp_path / n) for n in ("out-checkpoints", "out-figures", "out-refs")}
    with Store.open(ws) as st:
        with pytest.raises(IntegrityError, match="experiments/icl/checkpoints is a link"):
            st.save_checkpoint("icl", 1, _state(1))
        with pytest.raises(IntegrityError, match="experiments/icl/figures is a link"):
            st.figure_path("icl", "round-0001/grid.png")
        with pytest.raises(IntegrityError, match=r"\.icl/locks/icl.lock is a link"):
            with st.step("icl", "evaluate", 0, {}):
                pass
        with pytest.raises(IntegrityError, match=r"\.icl/references is a link"):
            save_reference(st, "k", {"model": {"w": torch.ones(1)}})
    lock.unlink()
    _link_out(exp / "shards", tmp_path / "out-shards")
    with Store.open(ws) as st:
        with pytest.raises(IntegrityError, match="experiments/icl/shards is a link"):
            st.files.write_part("icl", 2, 1, 1, 2, make_arrays(), {**attrs, "rows": [[0, 12]],
                                                                    "round_count": 24})
        with pytest.raises(IntegrityError, match="experiments/icl/shards is a link"):
            st.files.remove_parts("icl", 1, 1)
    assert victim.read_text() == "precious"
    assert {n: _files(tmp_path / n) for n in outside} == outside


def test_a_shard_that_leads_to_dev_zero_is_refused_not_read(tmp_path, make_arrays, attrs):
    ws = _workspace(tmp_path / "ws", make_arrays, attrs)
    shard = ws / "experiments" / "icl" / "shards" / "round-0001.v1.h5"
    shard.unlink()
    shard.symlink_to("/dev/zero")
    with Store.open(ws) as st:
        with pytest.raises(IntegrityError, match=r"shard experiments/icl/shards/round-0001.v1"
                           r".h5 lies behind a link that leaves the workspace: .* \(to "
                           r"/dev/zero\).*then re-create it with `icl synthesize --round 1 "
                           r"--force -e icl`"):
            st.read_shard(st.active_shard("icl", 1))


# ------------------------------------------------------------ icl verify names it
@pytest.mark.parametrize("how", ["shards folder", "shard to /dev/zero", "experiment folder"])
def test_verify_repair_and_rebuild_name_a_link_out_and_never_crash(tmp_path, make_arrays,
                                                                   attrs, how):
    ws = _workspace(tmp_path / "ws", make_arrays, attrs)
    exp = ws / "experiments" / "icl"
    out = tmp_path / "out"
    out.mkdir()
    if how == "shards folder":
        _link_out(exp / "shards", out / "shards")
        (out / "shards" / "round-0009.v1.h5.tmp-1-0123abcd").write_bytes(b"x")  # not icl's
        link = "experiments/icl/shards"
    elif how == "shard to /dev/zero":
        (exp / "shards" / "round-0001.v1.h5").unlink()
        (exp / "shards" / "round-0001.v1.h5").symlink_to("/dev/zero")
        link = "experiments/icl/shards/round-0001.v1.h5"
    else:
        _link_out(exp, out / "icl")
        link = "experiments/icl"
    outside = _files(out)
    for argv in (["verify"], ["verify", "--repair", "--no-mlflow"]):
        done = icl(*argv, "-w", ws)
        assert done.code == 4, (argv, done.stdout, done.stderr)
        found = [x for x in done.stdout.splitlines() if f"{link} is a link that leaves" in x]
        assert found and found[0].startswith("problem: "), done.stdout
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    (ws / ".icl" / "catalog.db").unlink()  # lost: --rebuild records what is inside
    done = icl("verify", "--rebuild", "-w", ws)
    assert done.code == 4, (done.stdout, done.stderr)
    assert f"{link} is a link that leaves" in done.stdout
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert _files(out) == outside  # nothing deleted or written out there


# ------------------------------------------------------- any printable character
@pytest.mark.parametrize("name", ["a?b", "q?x=1&y#z", "a%3Fb", "sp ace%", "ü;'\"$(x)"])
def test_a_workspace_path_with_printable_characters_keeps_every_file_inside(tmp_path, name):
    parent = tmp_path / name
    with Store.init(parent / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
        st.record_evaluation("icl", 0, "test", 0.25, [0.25], 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert sorted(p.name for p in parent.iterdir()) == ["ws"]  # nothing beside it
    assert (parent / "ws" / ".icl" / "catalog.db").is_file()
    with Store.open(parent / "ws") as st:  # read back through sqlite3, as written
        assert [e.error for e in st.evaluations("icl")] == [0.25]
        assert st.tracking_uri.startswith("sqlite:///") and "?" not in st.tracking_uri


def test_mlflow_tracks_inside_a_workspace_whose_path_holds_a_question_mark(tmp_path,
                                                                         monkeypatch):
    from store import tracking

    monkeypatch.setattr(tracking, "_failure", None)  # tracking on, whatever ran before
    parent = tmp_path / "run?1#2"
    with Store.init(parent / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
        tracker = st.tracker("icl")
        tracker.log_metrics({"test_error": 1.0}, step=0)
        assert tracker.run_id is not None
    assert sorted(p.name for p in parent.iterdir()) == ["ws"]
    assert (parent / "ws" / ".icl" / "mlflow.db").is_file()


def test_status_and_verify_work_in_a_workspace_path_with_a_question_mark(tmp_path,
                                                                         make_arrays, attrs):
    ws = _workspace(tmp_path / "a?b c" / "ws", make_arrays, attrs)
    for argv in (["status"], ["verify"]):
        done = icl(*argv, "-w", ws)
        assert done.code == 0, (argv, done.stderr)
    assert sorted(p.name for p in (tmp_path / "a?b c").iterdir()) == ["ws"]


def test_a_line_break_in_the_workspace_path_is_refused_in_one_line(tmp_path):
    with pytest.raises(StoreError, match="holds a line break"):
        Store.init(tmp_path / "a\nb")
    assert list(tmp_path.iterdir()) == []
    Store.init(tmp_path / "ws").close()
    (tmp_path / "ws").rename(tmp_path / "a\nb")
    done = icl("status", "-w", tmp_path / "a\nb")
    assert done.code == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "holds a line break" in done.stderr


TINY = ["--arch", "tiny", "--train-size", "200", "--val-size", "100", "--init-epochs", "1",
        "--count", "4", "--max-steps", "15", "--sampler-lr", "0.05", "--no-mlflow",
        "--threads", "1", "--device", "cpu"]


@pytest.mark.slow
def test_synthesize_refuses_a_shards_folder_that_leads_out_in_one_line(tmp_path):
    ws = tmp_path / "ws"
    done = icl_process("init", "-w", ws, "-e", "icl", "--method", "icl", *TINY)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    _link_out(ws / "experiments" / "icl" / "shards", out)
    done = icl_process("synthesize", "-w", ws, "--round", "1", "--no-mlflow", "--threads", "1")
    assert done.returncode == 4, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiments/icl/shards is a link that leaves" in lines[0]
    assert list(out.iterdir()) == []  # no shard written out there


def test_links_that_stay_inside_and_a_workspace_reached_through_a_link_are_fine(
        tmp_path, make_arrays, attrs):
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    ws = _workspace(tmp_path / "via" / "ws", make_arrays, attrs)  # resolved: real/ws
    figures = ws / "experiments" / "icl" / "figures"
    figures.rmdir()
    (ws / "kept-figures").mkdir()
    figures.symlink_to(ws / "kept-figures")  # a link, but into the workspace
    with Store.open(tmp_path / "via" / "ws") as st:
        path = st.figure_path("icl", "grid.png")
        st.write_figure(path, lambda tmp: tmp.write_bytes(b"png"))
        assert st.verify().ok
    assert (ws / "kept-figures" / "grid.png").read_bytes() == b"png"


def test_mlflow_never_tracks_through_a_link_out_of_the_workspace(tmp_path, capfd,
                                                                 monkeypatch):
    from store import tracking

    monkeypatch.setattr(tracking, "_failure", None)  # on now; off again after this test
    with Store.init(tmp_path / "ws") as st:
        st.create_experiment("icl", {"method": "icl"})
        (tmp_path / "out").mkdir()
        (st.root / ".icl" / "mlartifacts").symlink_to(tmp_path / "out")
        tracker = st.tracker("icl")
        tracker.log_metrics({"test_error": 1.0}, step=0)  # best effort: a warning, no write
        assert tracker.run_id is None
    err = capfd.readouterr().err
    assert err.count("warning: MLflow tracking at") == 1
    assert ".icl/mlartifacts is a link that leaves the workspace" in err
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "ws" / ".icl" / "mlflow.db").exists()
