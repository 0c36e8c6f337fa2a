"""A long torch computation may be asked to stop between its steps.

The loops that dominate the toolkit's long computations (the Langevin chains, the decoding loop,
AIS's temperatures) call `check()` once per step, and the decoder's vocabulary projection once per
block of token rows (a posterior step of 256 chains of 42-word sentences is seconds). Outside
`cancellable` (the CLI, training, the tests of the library) it is one context-variable lookup and
nothing else. Inside `cancellable(event)`, once `event` is set (from any thread), the next `check()`
raises `Cancelled`, so the computation ends within one step (or block) and unwinds through its
`finally` blocks (a model's train/eval mode is restored as usual).

The HTTP server runs each job on its worker thread inside `cancellable`, and sets the event when
nobody awaits the job's answer any more: every client it serves has left, or the server is stopping
(server/batcher.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The event of the innermost `cancellable` of this thread's context; None outside any.
_EVENT: ContextVar[threading.Event | None] = ContextVar("textebm_cancellation_event", default=None)


class Cancelled(Exception):
    """The computation was asked to stop (its `cancellable` event was set); its result is unwanted."""


@contextmanager
def cancellable(event: threading.Event) -> Iterator[threading.Event]:
    """Within the block, `check()` raises `Cancelled` once `event` is set (by any thread)."""
    token = _EVENT.set(event)
    try:
        yield event
    finally:
        _EVENT.reset(token)


def check() -> None:
    """Raise `Cancelled` if the current computation was asked to stop; a no-op outside `cancellable`."""
    event = _EVENT.get()
    if event is not None and event.is_set():
        raise Cancelled("the computation was asked to stop")


def requested() -> bool:
    """True when the current computation was asked to stop (it will raise at its next `check()`)."""
    event = _EVENT.get()
    return event is not None and event.is_set()
