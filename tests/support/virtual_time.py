"""Virtual time for engine tests: an event loop whose clock jumps to the next timer when
nothing is ready to run, and a FakeClock that reads (and can push) that same time.

Why a loop and not only a clock object: the engine sleeps, waits with timeouts and
schedules timers; if only `deps.clock.sleep` were virtual, any `asyncio.wait_for` or
`asyncio.sleep` left in the code would wait in real time (or, worse, a clock that jumps
on every `sleep` call lets concurrent sleepers race each other ahead). With the loop's
own time virtual, every timer of every task advances together and in order, exactly as
on a real loop, only without the waiting. A whole canary of several virtual minutes
runs in milliseconds."""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EPOCH = 1_800_000_000.0
"""Unix time at virtual monotonic 0: far from 0, so code that subtracts times sees real-looking values."""


class FakeClock:
    """The Clock port in virtual time: `now()` (unix seconds), `monotonic()`, `sleep()`.

    Also callable (`clock()` is `now()`), so it fits a `Callable[[], float]` clock too.
    `sleep` is the loop's sleep: on a VirtualTimeLoop it returns as soon as every other
    task is idle, with the clock advanced by exactly `seconds`."""

    def __init__(self, epoch: float = EPOCH) -> None:
        self.epoch = epoch
        self._t = 0.0

    def now(self) -> float:
        return self.epoch + self._t

    def monotonic(self) -> float:
        return self._t

    def __call__(self) -> float:
        return self.now()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop) and loop.clock is self, \
            "FakeClock.sleep runs on its own VirtualTimeLoop (support.virtual_time.run), else it would really wait"
        await asyncio.sleep(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move time forward (never back); timers now due fire on the loop's next turn."""
        if seconds > 0:
            self._t += seconds


class _JumpingSelector:
    """Wraps the loop's selector: when the loop would block waiting for its next timer
    and no I/O is ready, time jumps to that timer instead of the thread sleeping."""

    def __init__(self, inner: selectors.BaseSelector, clock: FakeClock) -> None:
        self._inner = inner
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:          # no timer at all: only I/O (a thread's wake-up) can come
            return self._inner.select(None)
        self._clock.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """`asyncio.to_thread` work runs at once, in the loop's thread: no real concurrency
    whose timing the virtual clock could outrun."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # the caller's await re-raises it, as with a real thread
            fut.set_exception(e)
        return fut


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self._selector = _JumpingSelector(self._selector, clock)  # type: ignore[has-type,assignment]
        self.set_default_executor(_InlineExecutor(max_workers=1))

    def time(self) -> float:
        return self.clock.monotonic()


def run(main: Coroutine[Any, Any, T], clock: FakeClock) -> T:
    """Run `main` to completion on a VirtualTimeLoop of `clock`, then close the loop."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
