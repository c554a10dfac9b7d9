"""Checkers for notebook 09 (from a trained adapter to something people use)."""

from __future__ import annotations

from course_utils.exercises import choice, report, unready

# Exercise 1 (predict, then run): the size of the Q8_0 GGUF file against the F16 one.
Q8_SIZE = {
    "a": "about a quarter of the F16 file (8 bits instead of 16, and a bit less again)",
    "b": "a little over half of the F16 file (8 bits per weight plus a scale per block of 32)",
    "c": "about the same as the F16 file (GGUF stores every tensor at 16 bits anyway)",
}


def q8_letter(q8_bytes: int, f16_bytes: int) -> str:
    """Which option of Q8_SIZE the measured files match."""
    ratio = q8_bytes / f16_bytes
    return "a" if ratio < 0.4 else "b" if ratio < 0.8 else "c"


def check_q8_size(prediction, q8_bytes=None, f16_bytes=None) -> bool:
    """Exercise 1: the student's prediction (a letter of Q8_SIZE) against the two files the cell wrote."""
    ran = isinstance(q8_bytes, int) and isinstance(f16_bytes, int) and f16_bytes > 0
    if unready(prediction, ran, "Run the cell that writes both GGUF files; it passes their sizes here.",
               f" ({', '.join(Q8_SIZE)}), run its cell, then this one again: the checker compares it with the "
               "files on disk."):
        return False
    happened = q8_letter(q8_bytes, f16_bytes)
    measured = f"Q8_0 / F16 = {q8_bytes / f16_bytes:.3f}"
    return choice(prediction, Q8_SIZE, happened,
                  f"The files say {measured}: Q8_0 keeps 32 one-byte weights and one 2-byte scale per block, "
                  "34 bytes where F16 needs 64 (0.53); the norms stay in F32 in both.",
                  {letter: f"The files say {measured}. Count the bytes of one block of 32 weights in each type."
                   for letter in Q8_SIZE})


# Exercise 2: send each row of one batch to the adapter it needs.
ROWS = ("record", "date", "base", "record")  # what each of four rows wants


def check_routing(names) -> bool:
    """Exercise 2: `adapter_names` for rows that want ROWS (calendar record, date, the bare base, record)."""
    wanted = ["calendar", "date", "__base__", "calendar"]
    if names is None:
        return report(False, "", "Write a list with one adapter name per row (the names the model was given).")
    if not isinstance(names, (list, tuple)) or len(names) != len(wanted):
        return report(False, "", f"Expected a list of {len(wanted)} names, one per row, got {names!r}.")
    wrong = [i for i, (got, want) in enumerate(zip(names, wanted)) if got != want]
    row = wrong[0] if wrong else 0
    hint = ("PEFT's name for a row that runs on the bare base is '__base__'." if ROWS[row] == "base"
            else f"Row {row} goes elsewhere: which adapter writes a {ROWS[row]}?")
    return report(not wrong, "One batch, three functions of the same base: each row's LoRA is added to the "
                  "base's output for that row only.", hint)
