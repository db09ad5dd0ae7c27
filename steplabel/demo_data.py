"""The demo problem sets: arithmetic word problems with small numbers.

Generated, not downloaded: deterministic for a seed.

- ``addition`` (the demo's): "Tom has 3 apples. He buys 5 more apples. ..." with both numbers
  in 1..9: the kind of problem the embedded 135M model solves most often (about a quarter of
  its sampled answers right, measured on 64 samples; the other kinds below were right 0-13% of
  the time), so that Monte Carlo finds right and wrong steps and consensus keeps labels of
  both signs.
- ``arithmetic``: one operation of six kinds (addition, subtraction, multiplication) with
  numbers up to 19: harder for the 135M model (6-15% of sampled answers right); the scale and
  saturation benchmarks use it.
"""

from __future__ import annotations

import json
import random

_TEMPLATES = [
    ("{name} has {a} apples. {pronoun} buys {b} more apples. How many apples does {name} "
     "have now?", lambda a, b: a + b),
    ("{name} had {a} stickers and gave {b} of them to a friend. How many stickers does "
     "{name} have left?", lambda a, b: a - b),
    ("A box holds {a} pencils. How many pencils are in {b} boxes?", lambda a, b: a * b),
    ("{name} reads {a} pages every day. How many pages does {name} read in {b} days?",
     lambda a, b: a * b),
    ("There are {a} birds on a tree. {b} birds fly away. How many birds are left on the tree?",
     lambda a, b: a - b),
    ("{name} has {a} red marbles and {b} blue marbles. How many marbles does {name} have in "
     "all?", lambda a, b: a + b),
]
_NAMES = [("Tom", "He"), ("Anna", "She"), ("Sam", "He"), ("Lily", "She"), ("Omar", "He"),
          ("Mia", "She")]


def generate_problems(count: int, *, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    problems = []
    for index in range(count):
        template, op = _TEMPLATES[index % len(_TEMPLATES)]
        name, pronoun = rng.choice(_NAMES)
        a, b = rng.randint(3, 19), rng.randint(2, 9)
        if op(a, b) < 0:  # subtraction stays non-negative
            a, b = b, a
        question = template.format(name=name, pronoun=pronoun, a=a, b=b)
        problems.append({"id": f"arith-{index:04d}", "question": question,
                         "answer": str(op(a, b))})
    return problems


_ADDITION = ("{name} has {a} {things}. {pronoun} buys {b} more {things}. How many {things} does "
             "{name} have now?")
_THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies"]


def generate_addition_problems(count: int, *, seed: int = 0) -> list[dict]:
    """One-step additions of two numbers in 1..9 (the embedded model's best case)."""
    rng = random.Random(seed)
    problems = []
    for index in range(count):
        name, pronoun = rng.choice(_NAMES)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = _ADDITION.format(name=name, pronoun=pronoun, a=a, b=b,
                                    things=_THINGS[index % len(_THINGS)])
        problems.append({"id": f"add-{index:04d}", "question": question, "answer": str(a + b)})
    return problems


KINDS = {"addition": generate_addition_problems, "arithmetic": generate_problems}


def write_problems(path: str, *, count: int = 24, seed: int = 0,
                   kind: str = "arithmetic") -> int:
    problems = KINDS[kind](count, seed=seed)
    with open(path, "w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(problem) + "\n")
    return len(problems)
