"""The results part of a store: evaluations, attacks and per-round metrics in the catalog.

Evaluations and attacks are keyed so that re-running a step replaces its record instead
of adding a second one: evaluations by (experiment, round, split), attacks by
(experiment, round, against experiment, against round, eps, method).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .errors import StoreError
from .hashing import config_hash
from .infos import AttackInfo, EvaluationInfo, to_info
from .schema import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .orm import Attack, Evaluation


class Results:
    """What the measuring steps found, recorded in ``catalog``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def record_evaluation(
        self, experiment: str, round: int, split: str, error: float, per_class: list, n: int
    ) -> EvaluationInfo:
        """Record (replacing any earlier one) the error of round ``round`` on ``split``."""
        return self.record_evaluations(experiment, round, [(split, error, per_class, n)])[0]

    def record_evaluations(
        self, experiment: str, round: int, splits: list[tuple[str, float, list, int]],
        metrics: dict[str, float] | None = None,
    ) -> list[EvaluationInfo]:
        """Record round ``round``'s evaluation of each split, ``(split, error, per_class,
        n)``, and its ``metrics``, in one transaction (each replacing any earlier record):
        a process killed meanwhile leaves all of them or none, never a round evaluated on
        one split but not the other."""
        name = self.catalog.experiment(experiment).name

        def record(s: Session) -> list[EvaluationInfo]:
            exp_id = self.catalog.row(s, name).id
            out = [self._put_evaluation(s, exp_id, round, *split) for split in splits]
            self._put_metrics(s, exp_id, round, metrics or {})
            s.flush()
            return [self._eval_info(row, name) for row in out]

        return self.catalog.write(record)

    @staticmethod
    def _put_evaluation(s: Session, exp_id: int, round: int, split: str, error: float,
                        per_class: list, n: int) -> Evaluation:
        from sqlalchemy import select

        from .orm import Evaluation

        row = s.scalar(select(Evaluation).filter_by(experiment_id=exp_id, round=round,
                                                    split=split))
        if row is None:
            row = Evaluation(experiment_id=exp_id, round=round, split=split)
            s.add(row)
        row.error, row.n, row.created_at = float(error), int(n), utcnow()
        row.per_class = [float(v) for v in per_class]
        return row

    @staticmethod
    def _put_metrics(s: Session, exp_id: int, round: int, metrics: dict[str, float]) -> None:
        from sqlalchemy import select

        from .orm import RoundMetric

        for key, value in metrics.items():
            row = s.scalar(select(RoundMetric).filter_by(experiment_id=exp_id, round=round,
                                                         name=key))
            if row is None:
                row = RoundMetric(experiment_id=exp_id, round=round, name=key)
                s.add(row)
            v = float(value)
            row.value, row.created_at = (v if math.isfinite(v) else None), utcnow()

    @staticmethod
    def _eval_info(row: Evaluation, exp: str) -> EvaluationInfo:
        return to_info(EvaluationInfo, row, experiment=exp)

    def evaluations(self, experiment: str | None = None) -> list[EvaluationInfo]:
        """Evaluations by experiment, round, split."""
        return self.catalog.reader.evaluations(self._name(experiment))

    def record_attack(
        self,
        experiment: str,
        round: int,
        against_experiment: str,
        against_round: int,
        eps: float,
        counts: dict[str, Any],
        method: str = "fgsm",
        params: dict[str, Any] | None = None,
    ) -> AttackInfo:
        """Record an attack's counts (replacing an earlier record with the same key:
        experiment, round, against experiment and round, eps, method). ``params``: the
        method's settings (plain JSON data), e.g. PGD's steps and step size."""
        name = self.catalog.experiment(experiment).name
        other = self.catalog.experiment(against_experiment).name
        if not isinstance(method, str) or not 0 < len(method) <= 16:
            raise StoreError(f"attack method must be a name of 1 to 16 characters, got {method!r}")
        config_hash(params or {})  # plain JSON data, or a one-line StoreError

        from sqlalchemy import select

        from .orm import Attack

        def record(s: Session) -> AttackInfo:
            exp_id = self.catalog.row(s, name).id
            key = dict(round=round, against_experiment=other, against_round=against_round,
                       eps=float(eps), method=method)
            row = s.scalar(select(Attack).filter_by(experiment_id=exp_id, **key))
            if row is None:
                row = Attack(experiment_id=exp_id, **key)
                s.add(row)
            row.counts, row.created_at = dict(counts), utcnow()
            row.params = None if params is None else dict(params)
            s.flush()
            return self._attack_info(row, name)

        return self.catalog.write(record)

    @staticmethod
    def _attack_info(row: Attack, exp: str) -> AttackInfo:
        return to_info(AttackInfo, row, experiment=exp, method=row.method or "fgsm")

    def attacks(self, experiment: str | None = None) -> list[AttackInfo]:
        """Attack records by experiment, round."""
        return self.catalog.reader.attacks(self._name(experiment))

    def record_metrics(self, experiment: str, round: int, metrics: dict[str, float]) -> None:
        """Record (replacing earlier values of the same names) round ``round``'s metrics;
        a value that is not finite is kept as NULL (JSON null), never as NaN text."""
        name = self.catalog.experiment(experiment).name
        self.catalog.write(
            lambda s: self._put_metrics(s, self.catalog.row(s, name).id, round, metrics))

    def metrics(self, experiment: str) -> dict[int, dict[str, float | None]]:
        """{round: {name: value}} of one experiment's recorded round metrics."""
        return self.catalog.reader.metrics(self.catalog.experiment(experiment).name)

    def _name(self, experiment: str | None) -> str | None:
        """``experiment`` as recorded (ExperimentNotFound if unknown); None: every one."""
        return None if experiment is None else self.catalog.experiment(experiment).name
