"""The row record of ``steplabel evaluate``'s ``predictions`` output: one row per evaluated item
and annotator, its Arrow schema derived from it (:mod:`steplabel.schemas.rows` style).

Sentinels: ``label`` and ``predicted_first_error`` are first-error indices, ``-1`` when every
step is correct; ``predicted_first_error`` is null when the prediction is unknown or skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from steplabel.schemas.rows import COST, column, schema_of

_STR, _I32, _I64, _BOOL = pa.string(), pa.int32(), pa.int64(), pa.bool_()


@dataclass(frozen=True)
class Prediction:
    """One annotator's first-error prediction for one human-labelled item."""

    problem_id: str = column(_STR)  # "<source>/<id>"
    item_id: str = column(_STR)
    source: str = column(_STR)  # the gold file's stem
    gold_format: str = column(_STR)  # processbench | step_ratings | prm800k
    generator: str | None = column(_STR)
    problem: str = column(_STR)
    steps: list = column(pa.list_(_STR))
    num_steps: int = column(_I32)
    label: int = column(_I32)  # human first-error index, -1 = all steps correct
    ratings: list | None = column(pa.list_(pa.int8()))  # per step -1/0/+1 (null after the first -1)
    final_answer_correct: bool | None = column(_BOOL)
    gold_answer: str | None = column(_STR)  # null: no usable gold answer
    gold_status: str = column(_STR)  # ok | missing | unparseable_answer | ...
    answer_origin: str | None = column(_STR)  # gold_file | answers_by_id | answers_by_problem
    annotator: str = column(_STR)  # mc | omegaprm | judge | consensus
    annotator_version: str = column(_STR)
    status: str = column(_STR)  # predicted | unknown | skipped
    reason: str = column(_STR)
    predicted_first_error: int | None = column(_I32)  # null: unknown or skipped
    exact_match: bool | None = column(_BOOL)  # predicted == label; null when skipped
    cost: dict = column(COST)  # requests, rollouts and tokens (schemas.rows.Cost fields)
    model_id: str | None = column(_STR)
    details: str = column(_STR)  # JSON: the annotator's evidence
    evaluation_hash: str = column(_STR)
    run_seed: int = column(_I64)


#: Explicit schema of the predictions output.
PREDICTION = schema_of(Prediction)
