"""The execution engine: one in-process Dask ``distributed.Client`` shared by all sessions.

Work is submitted as small functions of small, hashable arguments (Dask pickles arguments even
in-process); the big arrays live in the module-level caches of :mod:`mlhk_viz.app.cache`, so a
task only names what it needs. Each session owns a :class:`Job` per kind of work ("fit", "view",
"curve", ...): submitting a new one cancels the previous one if it has not started, and a
running one notices at its next progress report that it went stale and stops (raising
:class:`Stale`). Results reach the session through its ``dispatch`` function (in a Panel
session: the Bokeh document's next-tick callback), and the session applies them only if they
still match its knobs.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable

_client = None
_client_lock = threading.Lock()

#: (session id, job name) -> the generation that is current; tasks compare theirs against it
_current: dict[tuple[str, str], int] = {}
_current_lock = threading.Lock()
_gen = itertools.count(1)


class Stale(Exception):
    """Raised inside a task whose result is no longer wanted (a newer request replaced it)."""


def client():
    """The shared in-process Dask client, created on first use (threads, no extra processes)."""
    global _client
    with _client_lock:
        if _client is None or _client.status in ("closed", "closing"):
            from distributed import Client, LocalCluster

            threads = int(os.environ.get("MLHK_VIZ_THREADS", "2"))
            # One BLAS thread per Dask thread: OpenBLAS's own threads spin-wait and, on a busy
            # 2-core machine, made a 200 x 200 eigendecomposition 60x slower (0.58 s vs 0.01 s).
            from threadpoolctl import threadpool_limits

            threadpool_limits(int(os.environ.get("MLHK_VIZ_BLAS_THREADS", "1")), user_api="blas")
            cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=threads,
                                   dashboard_address=None, silence_logs=40)
            _client = Client(cluster, set_as_default=False)
            _close_before_interpreter_shutdown()
        return _client


_exit_hook_registered = False


def _exit() -> None:
    # every running task goes stale and stops at its next progress report, so exit does not
    # wait for a fit nobody will see
    with _current_lock:
        _current.clear()
    shutdown()


def _close_before_interpreter_shutdown() -> None:
    """Close the client when the interpreter exits, early enough for its callbacks to run.

    A script that starts work (an ``AppState`` fits on construction) and exits without
    :func:`shutdown` otherwise leaves futures finishing while Python shuts down: ``atexit`` runs
    after ``concurrent.futures`` has stopped accepting work, and each finishing future printed a
    "cannot schedule new futures after interpreter shutdown" traceback. ``threading``'s exit hooks
    run before that (``concurrent.futures`` itself registers there), latest first.
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    import atexit

    register = getattr(threading, "_register_atexit", atexit.register)
    try:
        register(_exit)
    except RuntimeError:  # already shutting down: nothing left to order
        return
    _exit_hook_registered = True


def shutdown() -> None:
    """Close the shared client (tests and benchmarks; the server keeps it for its lifetime)."""
    global _client
    with _client_lock:
        if _client is not None:
            cluster = _client.cluster
            _client.close()
            if cluster is not None:
                cluster.close()
            _client = None


def is_current(session: str, job: str, gen: int) -> bool:
    with _current_lock:
        return _current.get((session, job)) == gen


def check(session: str, job: str, gen: int) -> None:
    """Raise :class:`Stale` if this generation of ``job`` has been replaced."""
    if not is_current(session, job, gen):
        raise Stale(f"{job} #{gen} of {session} is stale")


def forget(session: str) -> None:
    """Drop a closed session's generations: its running tasks go stale and stop."""
    with _current_lock:
        for k in [k for k in _current if k[0] == session]:
            del _current[k]


class Job:
    """One kind of background work of one session; at most one generation is current."""

    def __init__(self, session: str, name: str, dispatch: Callable[[Callable[[], None]], None]):
        self.session, self.name, self.dispatch = session, name, dispatch
        self.future = None
        self.gen = 0
        self.started = 0.0

    def submit(self, fn, *args, on_done: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None,
               priority: int = 0) -> int:
        """Run ``fn(progress, *args)`` on the Dask client; ``on_done(result)`` is dispatched if still current.

        ``progress(done, total, stage)`` is the callback the task reports through; it raises
        :class:`Stale` once a newer submission replaced this one.
        """
        gen = next(_gen)
        with _current_lock:
            _current[(self.session, self.name)] = gen
        old, self.gen, self.started = self.future, gen, time.perf_counter()
        if old is not None and not old.done():
            old.cancel()
        session, name = self.session, self.name
        self.future = client().submit(_run, fn, session, name, gen, args, key=f"{name}-{session}-{gen}",
                                      pure=False, priority=priority)

        def done(fut):
            if fut.cancelled() or not is_current(session, name, gen):
                return
            try:
                exc = fut.exception()
            except BaseException as e:  # noqa: BLE001 - CancelledError and friends
                exc = e
            if exc is not None:
                if isinstance(exc, Stale):
                    return
                if on_error is not None:
                    self.dispatch(lambda: is_current(session, name, gen) and on_error(exc))
                return
            result = fut.result()
            if isinstance(result, str) and result == STALE:
                return
            self.dispatch(lambda: is_current(session, name, gen) and on_done(result))

        self.future.add_done_callback(done)
        return gen

    def cancel(self) -> None:
        with _current_lock:
            _current[(self.session, self.name)] = -1
        if self.future is not None and not self.future.done():
            self.future.cancel()

    @property
    def busy(self) -> bool:
        return self.future is not None and not self.future.done()


# progress reports from tasks are forwarded to per-session listeners, throttled
_listeners: dict[str, Callable[[str, int, int, str], None]] = {}


def listen(session: str, fn: Callable[[str, int, int, str], None] | None) -> None:
    if fn is None:
        _listeners.pop(session, None)
    else:
        _listeners[session] = fn


# items streamed by a running task (``progress.emit(item)``, e.g. MD frames) go to a per-(session, job) sink
_sinks: dict[tuple[str, str], Callable[[Any], None]] = {}


def sink(session: str, job: str, fn: Callable[[Any], None] | None) -> None:
    """Receive what the session's ``job`` emits (called in the worker thread; dispatch from there)."""
    if fn is None:
        _sinks.pop((session, job), None)
    else:
        _sinks[(session, job)] = fn


#: returned by a task that stopped because it went stale (not raised: Dask would log a traceback)
STALE = "<stale>"


def _run(fn, session, name, gen, args):
    try:
        return _run_checked(fn, session, name, gen, args)
    except Stale:
        return STALE


def _run_checked(fn, session, name, gen, args):
    check(session, name, gen)
    last = [0.0]

    def progress(done: int, total: int, stage: str) -> None:
        check(session, name, gen)
        now = time.perf_counter()
        if done in (0, total) or now - last[0] > 0.1:
            last[0] = now
            cb = _listeners.get(session)
            if cb is not None:
                cb(name, int(done), int(total), str(stage))

    def emit(item) -> None:
        check(session, name, gen)
        fn_ = _sinks.get((session, name))
        if fn_ is not None:
            fn_(item)

    progress.emit = emit
    return fn(progress, *args)
