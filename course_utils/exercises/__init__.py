"""Exercise checkers, one module per notebook (`nb01`, `nb02`, ...).

Each checker takes the student's answer, prints one line (correct, or a hint that does not give the answer
away) and returns True or False, so a notebook cell can be re-run until it says "Correct".
"""

from __future__ import annotations


def report(ok: bool, praise: str, hint: str) -> bool:
    """Print the verdict of a checker and return it."""
    print(f"✅ Correct. {praise}" if ok else f"❌ Not yet. {hint}")
    return ok


def close(answer, expected: float, rel: float = 1e-6) -> bool:
    """True when a numeric answer is within `rel` of the expected value (False for non-numbers)."""
    try:
        return abs(float(answer) - expected) <= rel * max(1.0, abs(expected))
    except (TypeError, ValueError):
        return False
