"""The work queue: converges and out-of-band reactions, one at a time, in order, on the one
worker thread it owns.

Threads: every method here runs on the agent's loop, except `_execute` (and the engine it
calls), which runs on the worker thread. `active` is true from the moment a converge is
accepted (inside its start delay too) or a reaction queued, until it ends.

Stopping (SIGTERM): the job in progress may finish within the stop timeout; then its action is
killed (process group, or an exception in its Python thread); if the worker still does not come
back, the run is recorded interrupted from the loop and the agent leaves without it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flock_node import logs, trace
from flock_node.engine import Engine, Kill, RunContext
from flock_node.protocol import RunProgress
from flock_node.store import INTERRUPTED, STOPPED_BEFORE_ACTION, Received, Store

log = logging.getLogger("flock.work")

CONVERGE_DELAY = 0.03  # seconds between accepting run_chef and starting the converge
# After the stop timeout killed the action in progress, how long the worker gets to come back
# before the run is recorded interrupted from the loop and the agent exits without it (a C call
# that never sees the exception raised in its thread).
ABANDON_AFTER = 3.0


@dataclass
class Job:
    kind: str  # converge | reaction
    run_id: str
    notification: Received | None = None
    started: bool = False
    opened: bool = False  # its run row was committed with the inbox row
    cause: dict[str, Any] | None = None  # a converge's: {"scheduled": True} for --interval
    t0: float = 0.0  # monotonic start, for the duration in the log


# A run id's random part without a syscall per id (os.urandom lets the GIL go, and on the loop
# winning it back from a busy worker cost 60-90 µs): Python's generator, seeded once from the
# system's randomness, as random as uuid4's 24 bits were.
_rng = random.Random()


def run_id() -> str:
    """A fresh run id: the time and 24 random bits."""
    return time.strftime("%Y%m%d-%H%M%S-") + f"{_rng.getrandbits(24):06x}"


def cause_of(n: Received | None) -> dict[str, Any] | None:
    """The cause recorded with a reaction's run: the sender's cause, plus which notification
    (and which attempt of it) this run applies."""
    if n is None:
        return None
    c = dict(n.cause)
    c.setdefault("node", n.sender)
    c["notification"] = n.id
    c["hops"] = n.hops
    if n.attempt > 1:  # run again after a stop or crash cut the last attempt
        c["attempt"] = n.attempt
    return c


class WorkQueue:
    """Listeners: `emit(event, **data)` for the flock's event stream, `changed()` when the
    activity changed (a heartbeat is due), `finished(job)` after each job, `stopped()` once a
    stop is requested and nothing runs any more."""

    def __init__(self, engine: Engine, store: Store, stop_timeout: float,
                 emit: Callable[..., None], changed: Callable[[], None],
                 finished: Callable[[Job], None], stopped: Callable[[], None]):
        self.engine = engine
        self.store = store
        self.stop_timeout = stop_timeout
        self.emit = emit
        self.changed = changed
        self.finished = finished
        self.on_stopped = stopped
        self.queue: deque[Job] = deque()
        self.current: Job | None = None
        self.progress: RunProgress | None = None
        self.stopping = threading.Event()
        self.kill = Kill()  # fired when the stop timeout runs out
        self.abandoned = False  # the worker never came back from a stop: exit without it
        self._open = False  # jobs start once the start-up compile is done
        self._stop_timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="converge")
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        # A converge accepted but inside its start delay counts: `run_chef()` then
        # `active()` is true, as a script waiting for the run to end expects.
        return self.current is not None or bool(self.queue)

    @property
    def compile_error(self) -> str | None:
        """Why the recipe does not compile now (None: it does)."""
        return self.engine.compile_error

    def idle(self) -> bool:
        """Would a job queued now start at once?"""
        return (self.current is None and not self.queue and self._open
                and not self.stopping.is_set())

    # -- start ---------------------------------------------------------------------------------
    async def compile_at_start(self, stop_requested: asyncio.Event) -> None:
        """The first compile, on the worker; a stop meanwhile waits at most the stop timeout
        (recipe code stuck at import cannot be interrupted), then `abandoned` is set."""
        self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = self._loop.run_in_executor(self._executor,
                                                               self.engine.compile)
        stop: asyncio.Future[Any] = asyncio.ensure_future(stop_requested.wait())
        try:
            await asyncio.wait([fut, stop], return_when=asyncio.FIRST_COMPLETED)
            if not fut.done():
                await asyncio.wait([fut], timeout=self.stop_timeout)
                if not fut.done():
                    log.error("the recipe compile did not end within --stop-timeout %g s; "
                              "stopping without it", self.stop_timeout)
                    self.abandoned = True
                    return
            fut.result()
        except Exception as e:  # RecipeError: keep serving the persisted resources
            log.error("recipe does not compile: %s", e)
        finally:
            stop.cancel()

    def open(self) -> None:
        """The start-up compile is done: jobs may run."""
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._kick()

    # -- jobs ----------------------------------------------------------------------------------
    def run_chef(self, cause: dict[str, Any] | None = None) -> tuple[str, bool]:
        """Queue a converge; join the one already waiting if there is one."""
        for job in self.queue:
            if job.kind == "converge" and not job.started:
                return job.run_id, True
        job = Job("converge", run_id(), cause=cause)
        self.queue.append(job)
        # Start a moment later: the answer goes out before the converge takes the CPU (a
        # `run-chef '*'` on one machine is acknowledged by all at once), and a burst of
        # requests joins this run.
        asyncio.get_running_loop().call_later(CONVERGE_DELAY, self._kick)
        return job.run_id, False

    def enqueue_reaction(self, n: Received, opened_run: str | None = None) -> None:
        """Queue a reaction; `opened_run`: its run row is already committed (only when the
        worker is idle, so it starts now)."""
        self.queue.append(Job("reaction", opened_run or run_id(), notification=n,
                              opened=opened_run is not None))
        self._kick()

    def _kick(self) -> None:
        """Start the next job now if the worker is idle (on the loop, no task hop): a
        reaction starts on the worker thread before its notification is even answered."""
        if self.current is not None or not self.queue or not self._open:
            return
        if self.stopping.is_set():
            self.on_stopped()
            return
        job = self.queue.popleft()
        job.started = True
        job.t0 = time.monotonic()
        self.current = job
        self.progress = RunProgress(job.run_id, job.kind, started=time.time())
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self._execute, job)
        trace.stamp("kicked")
        fut.add_done_callback(lambda f: self._done(job, f))
        # Announce after handing the job over: the worker starts while we send these.
        self.emit("run_started", run=job.run_id, kind=job.kind,
                  cause=cause_of(job.notification))
        self.changed()
        # A reaction's one line is its end (a stream of them would double the log).
        level = logging.INFO if job.kind == "converge" else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, logs.run_started(job.kind, job.run_id, job.cause, job.notification))

    def _done(self, job: Job, fut: asyncio.Future[dict[str, Any]]) -> None:
        trace.stamp("job_done")
        try:
            result = fut.result()
        except BaseException as e:  # never leave `active` stuck on a bug
            if not isinstance(e, asyncio.CancelledError):
                log.error("run %s crashed", job.run_id, exc_info=e)
            result = {"id": job.run_id, "status": "failed", "error": f"internal: {e}"}
        finally:
            self.current = None
            self.progress = None
        try:
            log.log(logging.INFO if result.get("status") == "ok" else logging.WARNING,
                    logs.run_finished(job.kind, job.run_id, job.cause, job.notification,
                                      result, time.monotonic() - job.t0))
            self.emit("run_finished", run=job.run_id, kind=job.kind,
                      status=result.get("status"), error=result.get("error"),
                      updated=result.get("updated", 0))
            self.changed()
        except Exception:
            log.exception("announcing the end of run %s failed", job.run_id)
        self.finished(job)
        if self.stopping.is_set():
            self.on_stopped()
            return
        self._kick()

    # -- on the worker thread ------------------------------------------------------------------
    def _execute(self, job: Job) -> dict[str, Any]:
        trace.stamp("worker_started")
        def progress(k: int, n: int, rid: str) -> None:
            self.progress = RunProgress(job.run_id, job.kind, rid, k, n,
                                        self.progress.started if self.progress else 0)
            if job.kind == "converge":  # a reaction's single step is its run_started
                self.emit("run_progress", run=job.run_id, resource=rid, k=k, n=n)

        if job.kind == "converge":
            ctx = RunContext(job.run_id, "converge", cause=job.cause, progress=progress,
                             stop=self.stopping, kill=self.kill)
            return self.engine.converge(ctx)
        n = job.notification
        assert n is not None  # a reaction's job carries its notification
        ctx = RunContext(job.run_id, "reaction", cause=cause_of(n), hops=n.hops,
                         progress=progress, stop=self.stopping, kill=self.kill,
                         opened=job.opened)
        try:
            result = self.engine.run_action(n.resource, n.action, ctx)
        except Exception as e:  # resource vanished since we accepted it
            self.store.runs.start(job.run_id, "reaction", cause_of(n))
            self.store.runs.finish(job.run_id, False, str(e), 0)
            result = {"id": job.run_id, "status": "failed", "error": str(e)}
        if self.stopping.is_set() and self._stopped_before_action(job.run_id):
            # SIGTERM cut its wait short, or the stop timeout killed its action: the action
            # never completed, so the notification stays pending and runs after the restart
            # (it was acknowledged; it must not be lost).
            return result
        self.store.inbox.done(n.id, job.run_id, result.get("status") == "ok",
                              result.get("error"))
        return result

    def _stopped_before_action(self, run_id: str) -> bool:
        run = self.store.runs.get(run_id)
        first = run.resources[0] if run is not None and run.resources else None
        return (first is not None and first.error is not None
                and first.error.startswith((STOPPED_BEFORE_ACTION, INTERRUPTED)))

    # -- stopping ------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM/SIGINT: let the job in progress finish within the stop timeout, else kill
        it; `stopped()` is called once nothing runs. A second call kills it at once."""
        if self.stopping.is_set():
            self.interrupt(f"{INTERRUPTED} killed by a second stop signal")
            return
        self.stopping.set()
        if self.current is None:
            log.info("stopping")
            self.on_stopped()
            return
        timeout = self.stop_timeout
        log.info("stopping: finishing the resource in progress (at most %g s)", timeout)
        self._stop_timer = asyncio.get_running_loop().call_later(
            timeout, self.interrupt, f"{INTERRUPTED} killed after --stop-timeout {timeout:g} s")

    def interrupt(self, message: str) -> None:
        """Kill the action in progress (process group, or an exception in its Python thread);
        if the worker still does not come back, stop without it."""
        job = self.current
        if job is None or self.kill.is_set():
            return
        log.warning("run %s: %s", job.run_id, message)
        self.kill.fire(message)
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._stop_timer = asyncio.get_running_loop().call_later(
            ABANDON_AFTER, self._abandon, job, message)

    def _abandon(self, job: Job, message: str) -> None:
        if self.current is not job:
            return
        log.error("run %s: the worker did not come back %g s after it was killed (stuck in a "
                  "call Python cannot interrupt): recording the run interrupted, exiting without "
                  "it", job.run_id, ABANDON_AFTER)
        try:
            # The acknowledged notification of a reaction stays pending: it runs after the
            # restart (inbox_recover finds no recorded action for it).
            self.store.runs.finish(job.run_id, False, f"{message} (the worker did not stop)")
        except Exception:
            log.exception("recording run %s as interrupted failed", job.run_id)
        self.abandoned = True
        self.on_stopped()

    def shutdown(self) -> None:
        """After the loop's tasks ended: let the worker thread go (not waiting for it if it
        was abandoned)."""
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self._executor.shutdown(wait=not self.abandoned)
