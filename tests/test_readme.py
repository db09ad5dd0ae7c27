"""The README stays short, its docs links resolve, and its demo output is the recorded one.

The demo block of README.md sits between ``<!-- demo-output -->`` and ``<!-- /demo-output -->``:
a ``console`` code block (the terminal of the recorded run: every line other than ``$ command``
lines and ``...`` must be one of ``benchmarks/results/demo.json``'s ``terminal`` lines) and a
sentence quoting the run's figures, in this form (line breaks anywhere between words)::

    Kept **K of J** judged trajectories (keep rate **R%**), with **P positive and N negative**
    step labels, at **X** rollouts per kept label, in **W s** (load average **L** at the start).

K, J, R, P and N are required; X, W and L are checked when quoted. A figure quoted with d
decimals must equal the recorded one rounded to d decimals. ``demo.json`` is written by
``benchmarks/demo_run.py``; until it exists the stale-output check is skipped.
"""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DEMO_RECORD = ROOT / "benchmarks" / "results" / "demo.json"
MAX_README_BYTES = 12 * 1024

_BLOCK = re.compile(r"<!-- demo-output -->(.*?)<!-- /demo-output -->", re.S)
_CONSOLE = re.compile(r"^```console[^\n]*\n(.*?)^```", re.S | re.M)
_DOCS_LINK = re.compile(r"\]\((docs/[^)#\s]+\.md)(?:#[^)\s]*)?\)")
_MD_LINK = re.compile(r"\]\(([^)#\s:]+\.md)(?:#[^)\s]*)?\)")

# (name, pattern, recorded value's key path); each group is one quoted number.
_REQUIRED = [
    ("trajectories kept and judged", r"Kept\s+\*\*(\d+)\s+of\s+(\d+)\*\*",
     [("trajectories_kept",), ("trajectories_judged",)]),
    ("keep rate", r"keep\s+rate\s+\*\*([\d.]+)%\*\*", [("keep_rate",)]),
    ("kept step labels", r"\*\*(\d+)\s+positive\s+and\s+(\d+)\s+negative\*\*",
     [("kept_step_labels", "positive"), ("kept_step_labels", "negative")]),
]
_OPTIONAL = [
    ("rollouts per kept label", r"\*\*([\d.]+)\*\*\s+rollouts\s+per\s+kept\s+label",
     [("rollouts_per_kept_label",)]),
    ("wall time", r"\bin\s+\*\*([\d.]+)\s*s\*\*", [("wall_seconds",)]),
    ("load average", r"load\s+average\s+\*\*([\d.]+)\*\*", [("load_average_at_start",)]),
]


def demo_block(readme_text: str) -> str:
    """The text between the demo-output markers; AssertionError when the markers are missing."""
    match = _BLOCK.search(readme_text)
    assert match, "README.md has no <!-- demo-output --> ... <!-- /demo-output --> block"
    return match.group(1)


def quoted_console_lines(block: str) -> list[str]:
    """Console lines the block quotes as the run's output (not ``$`` commands, not ``...``)."""
    lines = []
    for body in _CONSOLE.findall(block):
        for line in body.splitlines():
            line = line.rstrip()
            if line and not line.startswith("$ ") and line != "...":
                lines.append(line)
    return lines


def _recorded(record: dict, path: tuple):
    value = record
    for key in path:
        value = value[key]
    if isinstance(value, (list, tuple)):  # a load average given as (1, 5, 15 min)
        value = value[0]
    return value


def _same(quoted: str, recorded, *, percent: bool = False) -> bool:
    """Whether ``quoted`` is ``recorded`` as printed: equal after rounding to its decimals.
    ``percent``: the record may hold a fraction (0.25) or a percentage (25.0)."""
    if recorded is None:
        return False
    values = [float(recorded), float(recorded) * 100.0] if percent else [float(recorded)]
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return any(abs(float(quoted) - v) <= 0.5 * 10 ** -decimals + 1e-9 for v in values)


def demo_mismatches(readme_text: str, record: dict) -> list[str]:
    """Every way the README's demo block differs from the recorded run (empty: it matches)."""
    block = demo_block(readme_text)
    problems = []
    if "PLACEHOLDER" in block:
        problems.append("the demo block still holds the placeholder: paste the recorded run "
                        "(benchmarks/results/demo.json's terminal lines and figures)")
    terminal = {str(line).rstrip() for line in record.get("terminal", [])}
    console = quoted_console_lines(block)
    if not console:
        problems.append("the demo block quotes no console output")
    for line in console:
        if line not in terminal and "PLACEHOLDER" not in line:
            problems.append(f"console line not in the recorded terminal: {line!r}")
    for name, pattern, paths, required in (
            [(*item, True) for item in _REQUIRED] + [(*item, False) for item in _OPTIONAL]):
        match = re.search(pattern, block)
        if match is None:
            if required:
                problems.append(f"the demo block does not state the {name} "
                                f"(pattern {pattern!r})")
            continue
        for quoted, path in zip(match.groups(), paths):
            recorded = _recorded(record, path)
            if not _same(quoted, recorded, percent=path == ("keep_rate",)):
                problems.append(f"{name}: the README says {quoted}, the recorded run "
                                f"{'.'.join(path)} = {recorded!r}")
    return problems


def test_readme_is_under_12_kb():
    size = len(README.read_bytes())
    assert size < MAX_README_BYTES, f"README.md is {size} bytes; move detail to docs/"


def test_readme_links_every_docs_file_and_only_existing_ones():
    linked = set(_DOCS_LINK.findall(README.read_text(encoding="utf-8")))
    missing = sorted(p for p in linked if not (ROOT / p).is_file())
    assert not missing, f"README.md links docs files that do not exist: {missing}"
    present = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    unlinked = sorted(present - linked)
    assert not unlinked, f"docs files the README does not link: {unlinked}"


def test_links_between_docs_files_resolve():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in _MD_LINK.findall(page.read_text(encoding="utf-8")):
            if not (page.parent / target).resolve().is_file():
                broken.append(f"{page.name} -> {target}")
    assert not broken, f"broken links in docs/: {broken}"


def test_readme_has_a_demo_block():
    assert quoted_console_lines(demo_block(README.read_text(encoding="utf-8")))


def test_readme_demo_output_is_the_recorded_run():
    if not DEMO_RECORD.is_file():
        pytest.skip("benchmarks/results/demo.json not recorded yet (benchmarks/demo_run.py "
                    "writes it); the README's demo block cannot be checked")
    record = json.loads(DEMO_RECORD.read_text(encoding="utf-8"))
    problems = demo_mismatches(README.read_text(encoding="utf-8"), record)
    assert not problems, "README.md's demo block is stale:\n" + "\n".join(problems)


# The checker itself, on a made-up record: it passes what matches and names what does not.

_RECORD = {
    "wall_seconds": 312.4, "load_average_at_start": [1.52, 1.1, 0.9],
    "terminal": ["[steplabel] finished in 312s: trajectories 9, rejected 30",
                 "steplabel: keep rate 23.1% (9 of 39); top reject reasons: disagree 20"],
    "problems": 12, "trajectories_kept": 9, "trajectories_judged": 39, "keep_rate": 0.2308,
    "reject_reasons": {"disagree": 20}, "kept_step_labels": {"positive": 11, "negative": 4},
    "rollouts_per_kept_label": 7.6, "warnings": [], "content_hash": "sha256:00",
}


def _readme(console: str, prose: str) -> str:
    return ("# x\n\n<!-- demo-output -->\n```console\n$ steplabel run jobs/demo.yaml\n"
            f"{console}\n```\n\n{prose}\n<!-- /demo-output -->\n")


_PROSE = ("Kept **9 of 39** judged trajectories (keep rate **23.1%**), with **11 positive and 4\n"
          "negative** step labels, at **7.6** rollouts per kept label, in **312 s** (load "
          "average\n**1.5** at the start).")


def test_checker_accepts_the_recorded_figures():
    console = "\n".join(_RECORD["terminal"])
    assert demo_mismatches(_readme(console, _PROSE), _RECORD) == []
    as_percent = dict(_RECORD, keep_rate=23.08)
    assert demo_mismatches(_readme(console, _PROSE), as_percent) == []


def test_checker_names_each_stale_figure_and_line():
    console = "[steplabel] finished in 1234s: trajectories 1, rejected 35"
    stale = (_PROSE.replace("9 of 39", "1 of 29").replace("23.1%", "3.4%")
             .replace("11 positive", "0 positive").replace("**7.6**", "**4.0**"))
    problems = demo_mismatches(_readme(console, stale), _RECORD)
    text = "\n".join(problems)
    for expected in ("finished in 1234s", "trajectories_kept", "trajectories_judged",
                     "keep_rate", "kept_step_labels.positive", "rollouts_per_kept_label"):
        assert expected in text, (expected, problems)
    assert "kept_step_labels.negative" not in text and "wall_seconds" not in text


def test_checker_refuses_the_placeholder_and_missing_figures():
    problems = demo_mismatches(_readme("PLACEHOLDER: paste here", "Kept **K of J**"), _RECORD)
    text = "\n".join(problems)
    assert "placeholder" in text and "keep rate" in text and "kept step labels" in text
    with pytest.raises(AssertionError, match="no <!-- demo-output -->"):
        demo_mismatches("# no block\n", _RECORD)
