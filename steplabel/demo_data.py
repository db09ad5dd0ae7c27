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


# ---------------------------------------------------------------------------------------------
# The code demo set: one small Python function per problem, graded by its asserts
# (``grader: {name: python_tests}``; ``steplabel demo-data --code``, jobs/data/code.jsonl).

#: (name, question, parameter, body of the reference solution, test inputs) per template;
#: ``{k}`` is a small number drawn per problem, ``{c}`` a letter. Each test asserts that the
#: function's value on an input equals the reference solution's, computed here.
_CODE_TEMPLATES = [
    ("add_{k}", "Write a Python function `add_{k}(x)` that returns the number x plus {k}.",
     "x", "return x + {k}", lambda k, c: [1, -k, 10, 0]),
    ("times_{k}", "Write a Python function `times_{k}(x)` that returns the number x "
     "multiplied by {k}.", "x", "return x * {k}", lambda k, c: [0, 1, 7, -3]),
    ("is_multiple_of_{k}", "Write a Python function `is_multiple_of_{k}(n)` that returns True "
     "when the integer n is divisible by {k}, and False otherwise.", "n",
     "return n % {k} == 0", lambda k, c: [0, k, k + 1, 3 * k, 7]),
    ("count_{c}", "Write a Python function `count_{c}(s)` that returns how many times the "
     "letter '{c}' appears in the string s.", "s", "return s.count('{c}')",
     lambda k, c: ["", c, f"x{c}y{c}", "hello"]),
    ("first_{k}", "Write a Python function `first_{k}(items)` that returns a list of the first "
     "{k} elements of the list items (all of them when it has fewer).", "items",
     "return list(items[:{k}])", lambda k, c: [[], [1], list(range(10))]),
    ("largest", "Write a Python function `largest(numbers)` that returns the largest number "
     "in a non-empty list of numbers.", "numbers", "return max(numbers)",
     lambda k, c: [[1], [3, 9, 2], [-5, -2, -7]]),
    ("reverse_text", "Write a Python function `reverse_text(s)` that returns the string s "
     "reversed.", "s", "return s[::-1]", lambda k, c: ["", "a", "abc", "steplabel"]),
    ("total", "Write a Python function `total(numbers)` that returns the sum of a list of "
     "numbers (0 for an empty list).", "numbers", "return sum(numbers)",
     lambda k, c: [[], [4], [1, 2, 3], [-1, 1]]),
]


def generate_code_problems(count: int, *, seed: int = 0) -> list[dict]:
    """``count`` plain python_tests records (``id``, ``question``, ``tests``,
    ``entry_point``, ``canonical_solution``), deterministic for ``seed``: one small function
    each, its tests asserts on the function's values (the reference solution's)."""
    rng = random.Random(seed)
    problems = []
    for index in range(count):
        name, question, param, body, inputs = _CODE_TEMPLATES[index % len(_CODE_TEMPLATES)]
        k, c = rng.randint(2, 9), rng.choice("aeiost")
        name, question, body = (t.format(k=k, c=c) for t in (name, question, body))
        solution = f"def {name}({param}):\n    {body}\n"
        scope: dict = {}
        exec(solution, scope)  # our own reference solution, written above, never model output
        tests = "".join(f"assert {name}({value!r}) == {scope[name](value)!r}\n"
                        for value in inputs(k, c))
        problems.append({"id": f"code-{index:04d}", "question": question, "tests": tests,
                         "entry_point": name, "canonical_solution": solution})
    return problems


def write_code_problems(path: str, *, count: int = 16, seed: int = 0) -> int:
    problems = generate_code_problems(count, seed=seed)
    with open(path, "w", encoding="utf-8") as handle:
        for problem in problems:
            handle.write(json.dumps(problem) + "\n")
    return len(problems)
