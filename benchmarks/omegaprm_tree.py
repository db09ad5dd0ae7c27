"""OmegaPRM tree shape: pairs between nested prefixes, single-step pairs, states (not a test).

On scripted five-step problems (tests/planted.py) with OmegaPRM's default settings (k = 8, 32
pre-filter rollouts, search limit 100), count per policy:

- ``pairs``: sibling preference pairs; ``nested``: pairs whose two prefixes nest (one is a
  prefix of the other: an action compared with its own prefix, issue 12); ``single_step``:
  pairs of two one-piece actions (the paper's pairwise data);
- ``states``: tree states; ``after_error``: estimated prefixes past an MC = 0 prefix, kept off
  the tree; ``rollouts``: rollouts sampled (the search itself does not depend on the tree).

Policies: ``planted`` (exact: MC > 0 exactly on clean prefixes) and two random landscapes of
tests/landscape.py: ``noisy`` (per-prefix MC 0 / 1 / mixed regardless of errors) and
``all_good`` (every prefix mixed, some rollouts cut off).

Usage: ``python benchmarks/omegaprm_tree.py [--problems 8] [--module PATH]``. ``--module``
loads another ``annotators/omegaprm.py`` in its place, e.g. an older revision
(``git show e703514:annotators/omegaprm.py > /tmp/old.py``) to compare before and after.
Prints a Markdown table and, without ``--module``, writes ``benchmarks/results/omegaprm_tree.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

POLICIES = {
    "planted": None,
    "noisy": (1, 1, 2, 0, 0, 0, 0),
    "all_good": (0, 0, 1, 0, 1, 0, 0),
}


def load_omegaprm(path: str | None):
    if path is None:
        from steplabel.annotators import omegaprm
        return omegaprm
    import steplabel.annotators  # noqa: F401  (the package the module lives in)
    spec = importlib.util.spec_from_file_location("steplabel.annotators.omegaprm", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["steplabel.annotators.omegaprm"] = module
    spec.loader.exec_module(module)
    return module


def nested(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def measure(omegaprm, policy: str, problems: int) -> dict:
    from landscape import LandscapePolicy
    from planted import PlantedPolicy, PlantedProblem

    from steplabel.annotators.splitting import get_splitter

    totals = dict(pairs=0, nested=0, single_step=0, states=0, after_error=0, rollouts=0)
    for i in range(problems):
        problem = PlantedProblem.make(f"five-{i}", num_steps=5)
        weights = POLICIES[policy]
        engine = (PlantedPolicy() if weights is None
                  else LandscapePolicy(seed=i, weights=weights)).engine()
        annotator = omegaprm.OmegaPRMAnnotator(engine, omegaprm.OmegaPRMConfig(), run_seed=1,
                                               splitter=get_splitter("step_markers"))
        result = asyncio.run(annotator.annotate(
            problem_id=problem.problem_id, prompt=problem.prompt(engine),
            question=problem.question, gold_answer=problem.gold))
        states = {s.state_id: s for s in result.states}
        totals["pairs"] += len(result.pairs)
        totals["nested"] += sum(nested(states[p.first_id].prefix, states[p.second_id].prefix)
                                for p in result.pairs)
        totals["single_step"] += sum(p.single_step for p in result.pairs)
        totals["states"] += len(result.states)
        totals["after_error"] += len(getattr(result, "states_after_error", ()))
        totals["rollouts"] += result.rollouts
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--module", default=None, help="another omegaprm.py to measure")
    args = parser.parse_args()
    omegaprm = load_omegaprm(args.module)
    rows = {policy: measure(omegaprm, policy, args.problems) for policy in POLICIES}
    columns = ["pairs", "nested", "single_step", "states", "after_error", "rollouts"]
    print(f"omegaprm {omegaprm.ANNOTATOR_VERSION}, {args.problems} five-step problems\n")
    print("| policy | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for policy, row in rows.items():
        print(f"| {policy} | " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.module is None:
        out = ROOT / "benchmarks" / "results" / "omegaprm_tree.json"
        out.write_text(json.dumps({"problems": args.problems, "annotator":
                                   f"omegaprm/{omegaprm.ANNOTATOR_VERSION}",
                                   "policies": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
