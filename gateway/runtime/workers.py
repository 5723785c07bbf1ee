"""``optgate serve --workers N``: a supervisor and N pre-forked worker processes.

The supervisor reserves the listening addresses, then forks the workers. Each
worker runs the whole gateway (``service.serve``) on its own event loop and
listens on the same addresses with SO_REUSEPORT, so the kernel spreads new
connections over the workers. The first worker starts alone (it makes the
token key file and migrates the store); the others follow once it listens.
With one worker per CPU, worker i is bound to CPU i (``--cpu-affinity``).
The supervisor restarts a worker that dies, passes SIGTERM / SIGINT on for a
graceful stop (each worker drains its messages in flight), and gives up with
exit status 2 when the first worker cannot start or workers keep failing
before they listen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import NoReturn

import structlog
import uvloop

from gateway.config import Config, HostPort
from gateway.runtime import logs, service
from gateway.runtime.metrics import across_processes
from gateway.smtp.server import SessionBoard
from suppression.errors import ConfigError, OptgateError

log = structlog.get_logger("optgate.workers")

MAX_START_FAILURES = 5  # workers in a row that die before they listen: give up
STOP_SECONDS = service.DRAIN_SECONDS + 10  # then SIGKILL
_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


def _usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, or None where the system cannot say (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None


def default_count() -> int:
    """One worker per core this process may run on."""
    cpus = _usable_cpus()
    return len(cpus) if cpus else os.cpu_count() or 1


def cpu_plan(count: int, affinity: str) -> list[int] | None:
    """The CPU each of ``count`` workers is bound to, or None: the kernel places them.

    ``auto`` binds worker i to the i-th CPU this process may run on when there
    is exactly one worker per such CPU, as nginx's ``worker_cpu_affinity auto``
    does: a worker then keeps its core and its caches while the MTA and other
    processes move around it. With fewer workers than CPUs none is bound,
    because a bound worker could not leave a core another process keeps busy
    while a core idles; with more, they would share cores anyway.
    """
    cpus = _usable_cpus()
    if affinity == "auto" and cpus is not None and len(cpus) == count:
        return cpus
    return None


@contextlib.contextmanager
def reserved(listen: HostPort, name: str) -> Iterator[HostPort]:
    """Hold a listen address while workers come and go; yields it with the real port.

    A plain bind first fails on a port in use, even by another optgate's
    workers (which SO_REUSEPORT alone would quietly join). The address is then
    bound again with SO_REUSEPORT and kept, not listening: it keeps the port
    (port 0 becomes a real one) and takes no connections itself.
    """
    host, port = listen
    held: socket.socket | None = None
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            port = probe.getsockname()[1]
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], port, *address[2:]))
    except OSError as exc:
        if held is not None:
            held.close()
        raise ConfigError(f"{name} {listen}: {exc.strerror or exc}") from None
    with held:
        yield HostPort(host, port)


@dataclass
class Worker:
    """A forked worker: its slot, process, and the pipe it reports readiness on."""

    index: int
    pid: int
    ready_fd: int | None  # read end, until the worker reported or died
    ready: bool = False


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(supervisor: int) -> None:
    """Have the kernel send this worker SIGTERM (a graceful stop) when the supervisor
    dies, even by SIGKILL; a worker never outlives it holding the ports."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os._exit(1)


def bind(cpu: int) -> None:
    """Run this process (and the threads it starts later) on ``cpu`` only; say so if it cannot."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # a CPU taken offline, or a sandbox that forbids it
        log.warning("worker_not_bound", cpu=cpu, error=exc.strerror)
    else:
        log.info("worker_bound", cpu=cpu)


class Supervisor:
    """Forks the workers, restarts those that die, stops them all on a signal."""

    def __init__(
        self,
        config: Config,
        parts: Collection[str],
        count: int,
        metrics_dir: str,
        cpus: list[int] | None = None,
    ) -> None:
        self.config, self.parts, self.count, self.metrics_dir = config, parts, count, metrics_dir
        self.cpus = cpus  # worker i runs on cpus[i] only; None: wherever the kernel likes
        self.sessions = SessionBoard(count)  # every worker's session counts, shared
        self.workers: dict[int, Worker] = {}  # by pid
        self.due: dict[int, float] = {}  # slot -> when to (re)start it
        self.selector = selectors.DefaultSelector()
        self.wakeup_r, self.wakeup_w = os.pipe()
        self.failures = 0  # workers in a row that died before they listened
        self.started_once = False  # any worker ever listened
        self.stop_by: float | None = None  # deadline of a stop in progress
        self.problem: str | None = None  # why the supervisor gives up

    def run(self) -> int:
        """Supervise until stopped; the exit status."""
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w)
        for signum in _SIGNALS:
            signal.signal(signum, lambda *_: None)  # the wakeup pipe carries the number
        self.selector.register(self.wakeup_r, selectors.EVENT_READ)
        self.due[0] = time.monotonic()  # the others follow once it listens
        while self.workers or (self.due and self.stop_by is None):
            self._start_due()
            for key, _ in self.selector.select(self._timeout()):
                if key.fd == self.wakeup_r:
                    self._signals(os.read(self.wakeup_r, 64))
                else:
                    self._ready(key.data)
            self._reap()
            if self.stop_by is not None and time.monotonic() > self.stop_by:
                self._kill_all(signal.SIGKILL)
        log.info("stopped")
        if self.problem:
            print(f"optgate: {self.problem}", file=sys.stderr)
            return 2
        return 0

    def _timeout(self) -> float | None:
        deadlines = [*self.due.values()] if self.stop_by is None else [self.stop_by]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _start_due(self) -> None:
        now = time.monotonic()
        for index, when in sorted(self.due.items()):
            if when <= now and self.stop_by is None:
                del self.due[index]
                self._fork(index)

    def _fork(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _die_with(supervisor)
            self._work(index, write_fd)
        os.close(write_fd)
        worker = Worker(index, pid, read_fd)
        self.workers[pid] = worker
        self.selector.register(read_fd, selectors.EVENT_READ, worker)
        log.info("worker_started", worker=index, pid=pid)

    def _work(self, index: int, ready_fd: int) -> NoReturn:
        """The worker process: the whole gateway on a fresh event loop."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            inherited = [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]
            for fd in (self.selector.fileno(), self.wakeup_r, self.wakeup_w, *inherited):
                os.close(fd)
            structlog.contextvars.bind_contextvars(worker=index)
            if self.cpus is not None:
                bind(self.cpus[index])

            def ready() -> None:
                os.write(ready_fd, b"r")

            serving = service.serve(
                self.config,
                self.parts,
                reuse_port=True,
                metrics=across_processes(self.metrics_dir),
                ready=ready,
                sessions=functools.partial(self.sessions.sessions, worker=index),
                audit_watch=index == 0,  # one worker verifies the audit log for all
            )
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(serving)
            code = 0
        except OptgateError as exc:
            print(f"optgate: worker {index}: {exc}", file=sys.stderr)
            code = 2
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _ready(self, worker: Worker) -> None:
        assert worker.ready_fd is not None
        report = os.read(worker.ready_fd, 1)
        self._close_pipe(worker)
        if not report:  # it died first: _reap tells why
            return
        worker.ready = True
        self.failures = 0
        log.info("worker_ready", worker=worker.index, pid=worker.pid)
        if not self.started_once:
            self.started_once = True
            now = time.monotonic()
            self.due.update({i: now for i in range(1, self.count)})

    def _close_pipe(self, worker: Worker) -> None:
        if worker.ready_fd is not None:
            self.selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._close_pipe(worker)
                self._exited(worker, os.waitstatus_to_exitcode(status))

    def _exited(self, worker: Worker, code: int) -> None:
        """Restart a worker that died (later and later while they die at start)."""
        if self.stop_by is not None:
            log.info("worker_stopped", worker=worker.index, pid=worker.pid, status=code)
            return
        log.warning(
            "worker_died", worker=worker.index, pid=worker.pid, status=code, ready=worker.ready
        )
        if worker.ready:
            self.due[worker.index] = time.monotonic()
            return
        self.failures += 1
        if not self.started_once:
            self._give_up(f"the first worker failed to start (exit status {code}); see above")
        elif self.failures >= MAX_START_FAILURES:
            self._give_up(
                f"{self.failures} workers in a row failed to start "
                f"(last exit status {code}); see above"
            )
        else:
            self.due[worker.index] = time.monotonic() + 0.1 * 2**self.failures

    def _give_up(self, problem: str) -> None:
        self.problem = problem
        log.error("giving_up", problem=problem)
        self._stop()

    def _signals(self, numbers: bytes) -> None:
        for number in numbers:
            if number in (signal.SIGTERM, signal.SIGINT):
                if self.stop_by is None:
                    log.info("stopping", signal=signal.Signals(number).name)
                    self._stop()
                else:  # asked again: at once
                    self._kill_all(signal.SIGKILL)

    def _stop(self) -> None:
        self.due.clear()
        self.stop_by = time.monotonic() + STOP_SECONDS
        self._kill_all(signal.SIGTERM)

    def _kill_all(self, signum: signal.Signals) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _text(listen: HostPort | None) -> str | None:
    return str(listen) if listen else None


def shared_pool(config: Config, count: int) -> Config:
    """The configuration with each worker's pool size: its share of the next hop's sessions
    (``[relay] pool_size`` 0), or the size set; a warning when the workers would together
    hold more connections than ``[relay] next_hop_sessions``."""
    relay = config.relay
    size = relay.per_worker(count)
    if count * size > relay.next_hop_sessions:
        log.warning(
            "pool_exceeds_next_hop",
            workers=count,
            pool_size=size,
            next_hop_sessions=relay.next_hop_sessions,
        )
    return dataclasses.replace(config, relay=dataclasses.replace(relay, pool_size=size))


def serve(args: argparse.Namespace, config: Config) -> int:
    """optgate serve: the supervisor's side; runs until SIGTERM or SIGINT."""
    logs.configure()
    parts = [args.only] if args.only else list(service.PARTS)
    count = args.workers or default_count()
    cpus = cpu_plan(count, args.cpu_affinity)
    config = shared_pool(config, count)
    with contextlib.ExitStack() as stack:
        if "smtp" in parts:
            smtp = stack.enter_context(reserved(config.smtp.listen, "[smtp] listen"))
            config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, listen=smtp))
        if "smtp" in parts and config.inbound.listen and config.inbound.domains:
            inbound = stack.enter_context(reserved(config.inbound.listen, "[inbound] listen"))
            config = dataclasses.replace(
                config, inbound=dataclasses.replace(config.inbound, listen=inbound)
            )
        if "smtp" in parts and config.partners.listen:
            partners = stack.enter_context(reserved(config.partners.listen, "[partners] listen"))
            config = dataclasses.replace(
                config, partners=dataclasses.replace(config.partners, listen=partners)
            )
        if "web" in parts:
            web = stack.enter_context(reserved(config.web.listen, "[web] listen"))
            config = dataclasses.replace(config, web=dataclasses.replace(config.web, listen=web))
        if "web" in parts and config.api.listen:
            api = stack.enter_context(reserved(config.api.listen, "[api] listen"))
            config = dataclasses.replace(config, api=dataclasses.replace(config.api, listen=api))
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="optgate-metrics-"))
        log.info(
            "workers_starting",
            workers=count,
            pool_size=config.relay.pool_size,
            cpus=cpus,
            smtp=str(config.smtp.listen) if "smtp" in parts else None,
            web=str(config.web.listen) if "web" in parts else None,
            inbound=_text(config.inbound.listen),
            partners=_text(config.partners.listen),
            api=_text(config.api.listen) if "web" in parts else None,
        )
        status = Supervisor(config, parts, count, metrics_dir, cpus).run()
    return status
