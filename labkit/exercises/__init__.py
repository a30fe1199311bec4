"""Exercise checks: each takes the learner's answer (a function or a value) and says whether it is right.

A check prints one `expect` line per claim it verifies and raises `ClaimFailed` on a wrong answer, with a hint that
names what to look at. An answer still at its placeholder (None, NotImplemented, a function that raises
NotImplementedError or returns None) raises `NotAttempted`, a `ClaimFailed` too. In a lesson, `attempt(check,
answer)` turns only that case into a "not attempted yet" line, so Run All on an unsolved lesson reaches the end:

    attempt(attention.check_online_softmax, my_online_softmax)

    exercises.attention   notebooks 02 and 02b (online softmax, causal tiles, HBM traffic, a Triton kernel)
    exercises.hybrid      notebook 03 (weight bytes of the hybrid, all block Linears in INT8, the tied head)
    exercises.int8        notebook 03b (per-channel INT8, the floor of one call, the launch grid)
    exercises.training    notebook 04 (training memory, data-parallel batches)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.checks import ClaimFailed, expect


class NotAttempted(ClaimFailed):
    """The answer is still its placeholder: nothing to check yet."""


def _placeholder(value: Any) -> bool:
    return value is None or value is NotImplemented or value is Ellipsis


def answer_value(value: Any, what: str) -> Any:
    """`value` itself, or NotAttempted when it is still a placeholder (None, NotImplemented, ...)."""
    if _placeholder(value):
        raise NotAttempted(f"{what} is not attempted yet: set it in the cell above")
    return value


def call_answer(fn: Any, what: str, *args, **kwargs) -> Any:
    """Call the learner's function; NotAttempted when it is missing, raises NotImplementedError or returns None."""
    if _placeholder(fn):
        raise NotAttempted(f"{what} is not attempted yet: write it in the cell above")
    if not callable(fn):
        raise ClaimFailed(f"{what} should be a function; got {type(fn).__name__} {fn!r}")
    try:
        out = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted(f"{what} is not attempted yet: it still raises NotImplementedError") from None
    if _placeholder(out):
        raise NotAttempted(f"{what} returned {out!r}: finish it (or add the missing `return`)")
    return out


def claim(name: str, measured: Any, expected: Any = True, tol: float | None = None, *, op: str | None = None,
          hint: str = "", committed: str | None = None):
    """`expect` with a hint added to the failure (and `committed=<file>` for a claim read from a committed file)."""
    try:
        return expect(name, measured, expected, tol, op=op, source="committed" if committed else "live",
                      file=committed)
    except ClaimFailed as err:
        raise ClaimFailed(f"{err}\n  hint: {hint}" if hint else str(err)) from None


def attempt(check: Callable[..., Any], *answers: Any, **kwargs: Any) -> bool:
    """Run an exercise check in a lesson: True when it passes; a placeholder answer prints "TODO ... not attempted
    yet" and returns False; a wrong answer raises `ClaimFailed` (the cell stops with the check's hint)."""
    try:
        check(*answers, **kwargs)
    except NotAttempted as err:
        print(f"TODO  {err}")
        return False
    return True


__all__ = ["NotAttempted", "answer_value", "attempt", "call_answer", "claim"]
