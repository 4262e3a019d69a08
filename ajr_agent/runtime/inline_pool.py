"""A pool that runs each task at once, in the caller's thread.

The agent runs its Slurm commands and verdicts in thread pools. Given this one instead,
it does everything in order in its own thread: what tests need to step the loop by hand,
and what a replay of a recorded day needs to come out the same each time.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class InlinePool(Executor):
    """An Executor whose submit() runs the task before it returns."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run `fn` now; its result (or exception) in a completed Future."""
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the Future carries it, as a thread pool's would
            future.set_exception(exc)
        return future
