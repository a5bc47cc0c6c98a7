"""Step durations recorded in workspace catalogs, per method and step: what a round costs.

    python -m benchmarks.step_times WS/.icl/catalog.db [more.db ...]

Reads the catalog's ``steps`` table (finished steps only; ``seconds`` is the step's wall
time as the step recorded it). Experiments are grouped by method, taken from each
experiment's config. Round 0's training (C_0) is listed on its own.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
from collections import defaultdict


def step_times(paths: list[str]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    query = ("select e.config, s.name, s.round, s.seconds from steps s "
             "join experiments e on e.id = s.experiment_id "
             "where s.state = 'ok' and s.seconds is not null and s.name != 'init'")
    for path in paths:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            for config, step, round_, seconds in db.execute(query):
                method = json.loads(config)["method"]
                times[(method, "C_0" if round_ == 0 else step)].append(seconds)
    return times


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print("| method | step | steps timed | median s | min-max s |")
    print("| --- | --- | --- | --- | --- |")
    for (method, step), xs in sorted(step_times(argv).items()):
        print(f"| {method} | {step} | {len(xs)} | {statistics.median(xs):.1f} | "
              f"{min(xs):.1f}-{max(xs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
