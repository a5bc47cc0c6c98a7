"""icl_cli.cli.cluster: experiments as a job array through submitit's local executor (the same
path a Slurm array takes), failures per task, and the parameters' one-line errors."""

import json

import pytest

from icl_cli.cli import cluster
from icl_cli.cli.lanes import Lane
from icl_cli.errors import StepError
from store import Store
from tests.kit import COMMON, ICL, copy_workspace, icl, icl_process

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def ws(small_pair, tmp_path_factory):
    """A baseline 'base' and an ICL experiment 'icl' from its C_0, at round 0."""
    return copy_workspace(small_pair, tmp_path_factory.mktemp("cluster") / "ws")


def lane(ws, name):
    return Lane(name, [*ICL, "run", "-w", str(ws), "--rounds", "1", "--json", *COMMON,
                       "-e", name])


def test_local_executor_runs_each_experiment_as_a_task(ws):
    """Two tasks at once, one that works and one that fails (each task is two cold
    processes, submitit's and icl's: the baseline beside them is the slow test's)."""
    lanes = cluster.run_lanes([lane(ws, "icl"), lane(ws, "nope")],
                              "local", ws, parallel=2, params={"timeout_min": 10})
    icl, nope = lanes
    assert icl.code == 0 and icl.state == "done"
    assert [r["round"] for r in icl.result()] == [0, 1]
    assert icl.result()[1]["test_error"] is not None
    # What the task did is in the catalog, as if `icl run` had been run by hand.
    store = Store.open(ws)
    assert [s.round for s in store.shards("icl")] == [1]
    assert {e.round for e in store.evaluations("icl")} == {0, 1}
    # A failing task fails alone, with the command's own exit code and one-line error.
    assert nope.code == 3 and nope.state == "failed" and "nope" in nope.error
    logs = list((ws / ".icl" / cluster.FOLDER).rglob("*_log.out"))
    assert len(logs) == 2  # one log per task, inside the workspace


def test_a_task_result_is_the_commands_own_output(ws):
    code, out, err = cluster.run_command([*ICL, "status", "-w", str(ws), "--json"])
    assert code == 0 and err == []
    assert {e["experiment"] for e in json.loads(out)["experiments"]} == {"base", "icl"}


@pytest.mark.parametrize("pairs, message", [
    (["timeout_min"], "--executor-param takes KEY=VALUE"),
    (["=3"], "--executor-param takes KEY=VALUE"),
])
def test_bad_parameters_are_one_line(pairs, message):
    with pytest.raises(StepError, match=message):
        cluster.parse_params(pairs)


def test_parameters_and_executor_checks(tmp_path):
    assert cluster.parse_params(["slurm_partition=gpu", "timeout_min=240"]) == {
        "slurm_partition": "gpu", "timeout_min": 240}
    with pytest.raises(StepError, match="--executor must be one of local, slurm"):
        cluster.executor("pbs", tmp_path, 1, {})
    with pytest.raises(StepError, match="--executor-param: .*no_such_thing"):
        cluster.executor("local", tmp_path, 1, {"no_such_thing": 1})


@pytest.mark.slow  # the same tasks as above, through the command line (~20 s)
def test_icl_run_executor_local_through_the_command_line(ws):
    """``icl run -e A -e B --executor local``: the tasks' results on stdout as with
    --parallel (icl's round 1 is done by the test above, so that task finds it done; the
    baseline's round 1 runs here). By default, test_local_executor_runs_each_experiment_as_a_task
    covers the executor's path, and test_icl_run_executor_refusals_are_one_line the command
    line's."""
    res = icl_process("run", "-w", ws, "-e", "base", "-e", "icl", "--rounds", "1",
                      "--executor", "local", "--executor-param", "timeout_min=10", "--json",
                      *COMMON, code=None)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out) == {"base", "icl"} and [r["round"] for r in out["icl"]] == [0, 1]
    assert "submitted 2 task(s) to local" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["-e", "base", "-e", "icl", "--executor", "pbs"], "--executor must be one of local, slurm"),
    (["-e", "base", "--executor", "local"], "--executor runs several experiments"),
    (["-e", "base", "-e", "icl", "--executor", "local", "--executor-param", "x"],
     "--executor-param takes KEY=VALUE"),
])
def test_icl_run_executor_refusals_are_one_line(ws, args, message):
    """Refused before anything is submitted (in this process: no job starts either way)."""
    res = icl("run", "-w", ws, "--rounds", "1", *args, *COMMON, code=3)
    assert message in res.stderr and "Traceback" not in res.output
    assert res.stderr.strip().count("\n") == 0
