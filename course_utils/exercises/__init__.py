"""Exercise checkers, one module per notebook (`nb01`, `nb02`, ...).

Each checker takes the student's answer, prints one line (correct, or a hint that does not give the answer
away) and returns True or False, so a notebook cell can be re-run until it says "Correct". An answer of the
wrong type (a string, a list, a tensor of many numbers) gets one line saying what was expected, never a
traceback; None, the blank in the notebooks, gets the hint.
"""

from __future__ import annotations

import numbers


def report(ok: bool, praise: str, hint: str) -> bool:
    """Print the verdict of a checker and return it."""
    print(f"✅ Correct. {praise}" if ok else f"❌ Not yet. {hint}")
    return ok


def unready(prediction, measured: bool, run: str, predict: str) -> bool:
    """The first steps of a predict-then-run checker: True, after one line that says what to do, while its cell
    has measured nothing (`run`: which cell to run) or no prediction is written (`predict`: what follows "Write
    your prediction in MY_PREDICTION")."""
    if not measured:
        report(False, "", run)
    elif prediction is None:
        report(False, "", f"Write your prediction in MY_PREDICTION{predict}")
    return not measured or prediction is None


_TRIES: dict[str, int] = {}  # checker -> wrong or blank answers so far, for hints in two steps


def two_step(key: str, nudge: str, formula: str) -> str:
    """A hint in two steps: the nudge on the first answer that is not right, the formula on every later one, so
    that a student gets to think before being told how."""
    _TRIES[key] = _TRIES.get(key, 0) + 1
    return nudge if _TRIES[key] == 1 else f"{formula} (a second hint; the first: {nudge})"


def reset_hints() -> None:
    """Start every two-step hint from its nudge again (the tests call it)."""
    _TRIES.clear()


def describe(answer) -> str:
    """An answer as a message shows it: its value, cut short, and its type: "'abc' (str)"."""
    text = repr(answer)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(answer).__name__})"


def as_number(answer, whole: bool = False) -> int | float | None:
    """`answer` as a plain number, or None when it is none. A one-element tensor or NumPy value counts; a string,
    a bool or a list does not. With `whole`, only whole numbers count (32.0 is read as 32)."""
    if hasattr(answer, "item"):  # torch.tensor(32), np.int64(32): one number inside
        try:
            answer = answer.item()
        except (ValueError, RuntimeError):  # a tensor or array of several numbers
            return None
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return None
    if whole:
        return int(answer) if float(answer).is_integer() else None
    return answer


def not_a_number(answer, whole: bool = False) -> bool:
    """True, after printing one line that says what was expected, when `answer` is given but is no number."""
    if answer is None or as_number(answer, whole) is not None:
        return False
    report(False, "", f"Expected {'a whole number' if whole else 'a number'}, got {describe(answer)}.")
    return True


def as_numbers(answer, whole: bool = False) -> list | None:
    """`answer` (a list, tuple, torch.Size or tensor) as a list of plain numbers, or None when it is none."""
    if hasattr(answer, "tolist"):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)):
        return None
    values = [as_number(a, whole) for a in answer]
    return None if any(v is None for v in values) else values


def not_numbers(answer, whole: bool = False) -> bool:
    """True, after printing one line that says what was expected, when `answer` is given but is no list of numbers."""
    if answer is None or as_numbers(answer, whole) is not None:
        return False
    report(False, "", f"Expected a list of {'whole numbers' if whole else 'numbers'}, got {describe(answer)}.")
    return True


def not_names(answer, what: str = "names") -> bool:
    """True, after printing one line that says what was expected, when `answer` is given but is no list or set of
    strings (one string is not a list of names)."""
    if answer is None or (isinstance(answer, (list, tuple, set, frozenset)) and all(isinstance(a, str) for a in answer)):
        return False
    report(False, "", f"Expected a list or set of {what} (strings), got {describe(answer)}.")
    return True


def close(answer, expected: float, rel: float = 1e-6) -> bool:
    """True when a numeric answer is within `rel` of the expected value (False for non-numbers)."""
    value = as_number(answer)
    return value is not None and abs(float(value) - expected) <= rel * max(1.0, abs(expected))


def plain(text: str) -> str:
    """A typed letter or name made comparable: "(B) " -> "b"."""
    return text.strip().strip("()").strip().rstrip(").").strip().lower()


def choice(answer, options: dict[str, str], right: str, praise: str, hints: dict[str, str],
           blank: str | None = None, names: bool = False, normalize=plain) -> bool:
    """A multiple-choice answer: a letter ("b", "B", "(b)"), or with `names` the option's own text too. `blank`
    is the hint for None (default: which letters there are); `hints` has one hint per wrong letter."""
    letters = ", ".join(options)
    if answer is None:
        return report(False, "", blank or f"Answer with one letter: {letters}.")
    if not isinstance(answer, str):
        return report(False, "", f"Expected one letter ({letters}) as a string, got {describe(answer)}.")
    given = normalize(answer)
    if names:
        given = {normalize(text): letter for letter, text in options.items()}.get(given, given)
    if given not in options:
        return report(False, "", f"Expected one of the letters {letters}, got {describe(answer)}.")
    return report(given == right, f"({right}) {praise}", hints.get(given, ""))

