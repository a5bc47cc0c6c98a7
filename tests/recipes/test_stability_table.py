"""The stability recipe's table: a run is counted only once it has ended."""

from types import SimpleNamespace

from recipes import stability_table


def run(rounds, diverged=None, running=(), recovery=None):
    return SimpleNamespace(rounds=rounds, diverged=diverged, running=list(running),
                           recovery=recovery or {})


def test_a_run_short_of_its_rounds_is_running_or_stopped_not_finished():
    assert stability_table.outcome(run(5), 5) == "finished"
    assert stability_table.outcome(run(3, running=["reclassify --round 4"]), 5) \
        == "running at round 3 of 5"
    assert stability_table.outcome(run(3), 5) == "stopped at round 3 of 5"
    assert not stability_table.ended(run(3), 5)
    # its last round recorded, a step of it still running (the record of a later step)
    assert not stability_table.ended(run(5, running=["evaluate --round 5"]), 5)


def test_a_divergence_ends_a_run_whatever_round_it_reached():
    assert stability_table.ended(run(2, diverged=3), 5)
    assert stability_table.outcome(run(2, diverged=3), 5) == "diverged in round 3"
    recovered = run(5, recovery={2: {"recovered": True, "attempts": 2}})
    assert stability_table.outcome(recovered, 5) == "recovered round 2 (2 attempts)"
