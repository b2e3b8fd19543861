"""Rules a program can check on a reply, for measuring whether a model follows a system prompt.

    passed, reason = check_reply("python_function", reply)

`python_function` ("answer with one Python function with type hints and a docstring, nothing else")
passes a reply when all of this holds:
- the reply is Python source, or exactly one fenced block (```python or ```py or a bare ```) with only
  whitespace outside it: a fence is markup, not extra content, so it is tolerated; prose before or after
  it, or a second block, fails;
- the source parses with `ast`;
- its top level is one `def` (or `async def`), optionally preceded by import statements (type hints
  such as `List[int]` may need one), and nothing else: no second function, class, statement or test;
- the function has a docstring;
- the function has a return annotation, and every parameter (including *args and **kwargs) is annotated.
"""

from __future__ import annotations

import ast
import re

from distill_trainer.errors import UsageError

_FENCE = re.compile(r"^```[ \t]*(python|py)?[ \t]*\n(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def python_source(reply: str) -> tuple[str | None, str]:
    """(the reply's Python source, "") or (None, why it is not one block of source)."""
    text = reply.strip()
    if not text:
        return None, "empty reply"
    if "```" not in text:
        return text, ""
    if text.startswith("```") and text.count("```") == 1:
        return None, "unclosed code fence (cut off)"  # most often a reply cut at max_new_tokens
    match = _FENCE.match(text)
    if match is None or "```" in match.group(2):
        return None, "text outside one code fence"
    return match.group(2), ""


def check_python_function(reply: str) -> tuple[bool, str]:
    """(passed, reason): reason names the first rule the reply breaks ("" when it passes)."""
    source, problem = python_source(reply)
    if source is None:
        return False, problem
    try:
        module = ast.parse(source)
    except SyntaxError:
        return False, "not valid Python"
    functions = [node for node in module.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions:
        return False, "no function"
    if len(functions) > 1:
        return False, "more than one function"
    function = functions[0]
    imports_only = all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in module.body[:-1])
    if module.body[-1] is not function or not imports_only:
        return False, "code besides the function"
    if ast.get_docstring(function) is None:
        return False, "no docstring"
    arguments = function.args
    parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    if any(parameter.annotation is None for parameter in parameters):
        return False, "a parameter without a type hint"
    if function.returns is None:
        return False, "no return type hint"
    return True, ""


CHECKERS = {"python_function": check_python_function}


def get_checker(name: str):
    if name not in CHECKERS:
        raise UsageError(f"checker={name!r} is not known; choose one of: {', '.join(CHECKERS)}")
    return CHECKERS[name]


def check_reply(name: str, reply: str) -> tuple[bool, str]:
    return get_checker(name)(reply)
