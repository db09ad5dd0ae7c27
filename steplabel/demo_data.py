"""The demo problem set: one-operation arithmetic word problems with small numbers.

Generated, not downloaded: deterministic for a seed. Sized for the embedded 135M model, which
is right on some of these and wrong on others (6-15% of sampled answers right, 25-40% of
problems with a mix of right and wrong among 4 samples), so Monte Carlo labels are non-trivial.
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


def write_problems(path: str, *, count: int = 24, seed: int = 0) -> int:
    problems = generate_problems(count, seed=seed)
    with open(path, "w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(problem) + "\n")
    return len(problems)
