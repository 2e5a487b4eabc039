"""Several worker processes from one command (``streamctl worker -c N``, ``--processes P``).

A worker process is bound by its one GIL: past a few hundred threads, its threads wait for
each other more than for the API, so the command's N calls in flight are split over processes
(config.processes: by default one per 250 calls, at most one per CPU). The processes are
forked from one parent after the imports, with those imports frozen out of the garbage
collector (``gc.freeze``), so that the pages holding them stay shared between the processes
instead of being copied into each one: the group takes far less memory than as many separate
workers.

The parent only supervises. It forwards SIGTERM and SIGQUIT to every child, and turns SIGINT
into SIGTERM (a warm shutdown): a Ctrl-C at a terminal reaches the children too, and a second
SIGINT would make Celery abort their running jobs. A child that exits while the group is not
shutting down is replaced, after a pause. A child that keeps failing (a crash loop: its Redis
turned read-only, say) is not: the group stops and exits with that child's status, so that the
supervisor above it (systemd, Kubernetes) sees the failure and restarts or reports it. Each
child asks the kernel for SIGTERM when the parent dies, so a killed parent leaves no orphan
workers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType

from worker.telemetry.logs import flush_logs

log = logging.getLogger("streamctl.processes")

#: Seconds before a child that exited unexpectedly is replaced.
RESTART_DELAY = 1.0
#: A child that fails this many times within CRASH_LOOP_WINDOW seconds is in a crash loop:
#: replacing it again would only hide the failure from the supervisor above. One crash (the
#: OOM killer, a bug hit once) is still replaced.
CRASH_LOOP_FAILURES = 3
CRASH_LOOP_WINDOW = 60.0
#: linux/prctl.h: deliver a signal to this process when its parent exits.
_PR_SET_PDEATHSIG = 1


def nodename_given(argv: Sequence[str]) -> bool:
    """Whether Celery worker arguments name the node (``-n``, ``--hostname``)."""
    # -n NAME, -nNAME, --hostname NAME, --hostname=NAME (no other option of Celery's worker
    # starts so).
    return any(arg.startswith(("-n", "--hostname")) for arg in argv)


def default_nodename() -> str:
    """A node name no other worker on this host has: ``streamctl-<pid>-<4 hex digits>@%h``.

    Celery's default, ``celery@%h``, is the same for every worker of a host: on RabbitMQ the
    second one dies (its control queue ``celery@host.celery.pidbox`` is exclusive to the first),
    on Redis the two answer as one in Flower and ``inspect``. The pid tells an operator which
    process it is; the random part keeps apart two containers that share a host name (host
    networking) and whose workers have the same pid in their own pid namespaces.
    """
    return f"streamctl-{os.getpid()}-{secrets.token_hex(2)}@%h"


def with_nodename(argv: Sequence[str]) -> list[str]:
    """Celery worker arguments with a unique node name unless they name one (``-n`` wins)."""
    args = list(argv)
    return args if nodename_given(args) else [*args, "--hostname", default_nodename()]


def child_argv(argv: Sequence[str], index: int) -> list[str]:
    """Celery worker arguments for child ``index`` (from 1): a node name of its own.

    ``-n name@host`` becomes ``name-<index>@host``. The worker command gives ``argv`` the
    group's name (``with_nodename``) before it forks; without one, a default name is taken.
    """
    args = with_nodename(argv)
    for position, arg in enumerate(args):
        if arg in ("-n", "--hostname") and position + 1 < len(args):
            args[position + 1] = _numbered(args[position + 1], index)
            return args
        if arg.startswith("--hostname="):
            args[position] = "--hostname=" + _numbered(arg.split("=", 1)[1], index)
            return args
        if arg.startswith("-n"):
            args[position] = "-n" + _numbered(arg[2:], index)
            return args
    return args


def _numbered(nodename: str, index: int) -> str:
    name, at, host = nodename.partition("@")
    return f"{name}-{index}{at}{host}"


def supervise(processes: int, run_child: Callable[[int], int]) -> int:
    """Fork ``processes`` children running ``run_child(index)``; return when all have ended.

    Returns what one Celery worker would: 0 after a requested shutdown (SIGTERM, SIGINT, or
    SIGQUIT, a cold one); else the exit status of the child whose crash loop stopped the group
    (128 + N for a child killed by signal N).
    """
    children: dict[int, int] = {}
    failures: dict[int, deque[float]] = {}
    stopping = False
    failed_with = 0
    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGQUIT, signal.SIG_DFL)
                _die_with_parent(parent)
                code = run_child(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker process %d failed", index)
            finally:
                flush_logs()  # os._exit skips atexit, where the log writer empties its queue
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def interrupt(_signum: int, frame: FrameType | None) -> None:
        forward(signal.SIGTERM, frame)

    # Shared pages stay shared only if the collector never writes to the objects in them.
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGQUIT, forward)
    signal.signal(signal.SIGINT, interrupt)
    for index in range(1, processes + 1):
        spawn(index)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if code != 0 and _crash_loop(failures.setdefault(index, deque()), time.monotonic()):
            log.critical(
                "worker process %d (pid %d) exited with %d, failing %d times within %g s: "
                "a crash loop; stopping the group",
                index,
                pid,
                code,
                CRASH_LOOP_FAILURES,
                CRASH_LOOP_WINDOW,
            )
            failed_with = code if code > 0 else 128 - code
            forward(signal.SIGTERM, None)  # a warm shutdown of the others
            continue
        log.error("worker process %d (pid %d) exited with %d; starting another", index, pid, code)
        time.sleep(RESTART_DELAY)
        if not stopping:
            spawn(index)
    return failed_with


def _crash_loop(failed_at: deque[float], now: float) -> bool:
    """Record a child's failure at ``now``; whether it is the CRASH_LOOP_FAILURES-th within
    the last CRASH_LOOP_WINDOW seconds."""
    failed_at.append(now)
    while failed_at and failed_at[0] < now - CRASH_LOOP_WINDOW:
        failed_at.popleft()
    return len(failed_at) >= CRASH_LOOP_FAILURES


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent exits (a no-op where prctl does not exist)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
