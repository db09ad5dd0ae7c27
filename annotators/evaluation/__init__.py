"""Evaluating annotators as first-error predictors against human labels (ProcessBench).

Pure logic, no Beam and no files: :mod:`steplabel.pipelines.evaluate` wires it into a Beam job
and reads the gold files (:mod:`steplabel.pipelines.gold_files`). By concern:

- :mod:`.items`: the evaluated items (:class:`~.items.GoldItem`), their rejects, gold-answer
  statuses; :mod:`.gold`: parsing the gold formats (ProcessBench, per-step ratings, the PRM800K
  release); :mod:`.answers`: gold answers from a separate file, joined by id or problem text.
- :mod:`.predict`: running the chosen annotators on the given steps (METHODS.md §5.2).
- :mod:`.metrics`: ProcessBench's scores (``error_acc``, ``correct_acc``, F1) and step-level
  precision and recall of negatives.
- :mod:`.report`: the report (a dict) and its Markdown.

**Index convention** (ProcessBench, 0-indexed): a first-error index lies in ``-1..M-1`` for a
solution of ``M`` steps; ``-1`` means every step is correct; ``None`` means unknown.
"""
