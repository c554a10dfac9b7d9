"""Multiple-choice questions that test understanding, not test-taking: the right option is not the one that
stands out by its length, and the right letters are spread (issue 24 found the right option longest in 8 of 12
questions, often by far, and "b" right in 8 of 12)."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
from collections import Counter
from pathlib import Path

EXERCISES = Path(__file__).resolve().parent.parent / "course_utils" / "exercises"


def multiple_choice() -> list[tuple[str, dict[str, str], str]]:
    """(checker, options, right letter) for every checker that calls `choice` with a module-level options dict;
    the right letter is the one the checker accepts."""
    found = []
    for path in sorted(EXERCISES.glob("nb*.py")):
        module = importlib.import_module(f"course_utils.exercises.{path.stem}")
        for fn in ast.parse(path.read_text()).body:
            if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("check_") or len(fn.args.args) != 1:
                continue  # a predict-then-run checker takes the measurement too: its right letter is the run's
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)
                     and getattr(n.func, "id", None) in ("choice", "_choice")]
            if calls:
                options = getattr(module, calls[0].args[1].id)
                with contextlib.redirect_stdout(io.StringIO()):
                    right = [letter for letter in options if getattr(module, fn.name)(letter) is True]
                assert len(right) == 1, (fn.name, right)
                found.append((f"{path.stem}.{fn.name}", options, right[0]))
    return found


def test_every_notebook_with_a_choice_question_is_found():
    names = {name.split(".")[0] for name, _, _ in multiple_choice()}
    assert len(multiple_choice()) >= 12 and {"nb01", "nb03", "nb08"} <= names


def test_the_right_option_is_rarely_the_longest():
    questions = multiple_choice()
    longest = [name for name, options, right in questions if max(options, key=lambda k: len(options[k])) == right]
    assert len(longest) <= len(questions) / 3, f"the right option is the longest in {longest}"
    for name, options, right in questions:
        others = max(len(text) for letter, text in options.items() if letter != right)
        assert len(options[right]) <= 1.25 * others, f"{name}: the right option is far longer than the others"


def test_no_letter_is_right_in_more_than_half():
    counts = Counter(right for _, _, right in multiple_choice())
    assert max(counts.values()) <= len(multiple_choice()) / 2, counts
