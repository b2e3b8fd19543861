"""The python_function checker on replies that pass and replies that break each rule, and the rate with its
standard error."""

from __future__ import annotations

import math

import pytest

from distill_trainer.context.generation_eval import rule_following
from distill_trainer.context.reply_checks import check_python_function, get_checker
from distill_trainer.errors import UsageError

GOOD = '''def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b'''

PASSING = {
    "plain": GOOD,
    "fenced python": f"```python\n{GOOD}\n```",
    "bare fence": f"```\n{GOOD}\n```",
    "surrounding whitespace": f"\n\n```py\n{GOOD}\n```\n",
    "imports first": f"from typing import List\n\n\n{GOOD.replace('a: int', 'a: List[int]')}",
    "no parameters": 'def answer() -> int:\n    """The answer."""\n    return 42',
    "star arguments": 'def f(*args: int, key: str = "", **kw: float) -> None:\n    """Do nothing."""',
    "async": 'async def f(x: int) -> int:\n    """Wait."""\n    return x',
    "nested helper": 'def f(x: int) -> int:\n    """Outer."""\n    def g(y):\n        return y\n'
    "    return g(x)",
}

FAILING = {
    "prose before": (f"Here is the function:\n```python\n{GOOD}\n```", "text outside one code fence"),
    "prose after": (f"```python\n{GOOD}\n```\nThis adds numbers.", "text outside one code fence"),
    "two fences": (
        f"```python\n{GOOD}\n```\n```python\nprint(add(1, 2))\n```",
        "text outside one code fence",
    ),
    "plain prose": ("Sure! You can add numbers with +.", "not valid Python"),
    "usage example": (f"{GOOD}\n\nprint(add(1, 2))", "code besides the function"),
    "import after": (f"{GOOD}\nimport os", "code besides the function"),
    "two functions": (f"{GOOD}\n\n{GOOD.replace('add', 'plus')}", "more than one function"),
    "class": ('class A:\n    """A."""', "no function"),
    "no docstring": ("def add(a: int, b: int) -> int:\n    return a + b", "no docstring"),
    "comment, not docstring": ("def add(a: int) -> int:\n    # add\n    return a", "no docstring"),
    "untyped parameter": (
        'def add(a, b: int) -> int:\n    """Add."""\n    return a + b',
        "a parameter without a type hint",
    ),
    "untyped kwargs": (
        'def f(x: int, **kw) -> int:\n    """F."""\n    return x',
        "a parameter without a type hint",
    ),
    "no return hint": ('def add(a: int, b: int):\n    """Add."""\n    return a + b', "no return type hint"),
    "cut off in a fence": (f"```python\n{GOOD[:40]}", "unclosed code fence (cut off)"),
    "cut off": ('def add(a: int, b: int) -> int:\n    """Add two', "not valid Python"),
    "empty": ("   ", "empty reply"),
}


@pytest.mark.parametrize("reply", PASSING.values(), ids=PASSING.keys())
def test_passing_replies(reply):
    assert check_python_function(reply) == (True, "")


@pytest.mark.parametrize("reply,reason", FAILING.values(), ids=FAILING.keys())
def test_failing_replies_name_the_broken_rule(reply, reason):
    assert check_python_function(reply) == (False, reason)


def test_rate_standard_error_and_failures_by_reason():
    replies = [GOOD] * 3 + [FAILING["no docstring"][0]]
    summary, checks = rule_following(replies, "python_function")
    assert (summary["n"], summary["passed"], summary["rate"]) == (4, 3, 0.75)
    assert summary["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert summary["failures"] == {"no docstring": 1}
    assert [c["passed"] for c in checks] == [True, True, True, False]


def test_an_unknown_checker_is_one_error_line():
    with pytest.raises(UsageError, match="python_function"):
        get_checker("pyhton_function")
