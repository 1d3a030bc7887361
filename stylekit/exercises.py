"""Checking cells for the course's exercises: a plain verdict, never an exception.

A notebook runs headless (papermill, nbval) with every exercise still unanswered, so a
check prints "not yet" and the run goes on; the solution cell below it checks again.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["check"]


def check(exercise: str, test: Callable[[], bool], hint: str) -> None:
    """Run ``test`` and print whether the exercise works; on failure print ``hint`` (and the error, if one was raised)."""
    try:
        passed = bool(test())
    except NotImplementedError:
        passed, hint = False, f"not written yet. {hint}"
    except Exception as error:  # a learner's code may fail in any way; the verdict says how
        passed, hint = False, f"{type(error).__name__}: {error}. {hint}"
    print(f"{exercise}: {'works ✓' if passed else 'not yet ✗ ' + hint}")
