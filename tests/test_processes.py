"""``streamctl worker --processes N``: forked Celery workers under one supervising parent.

Real processes on a private cluster (tests.faults.harness: a Redis of its own), so that a ping
answers only from the workers started here and no other worker takes their jobs. One group of
two processes is shared by the tests that leave it running (node names, jobs, metrics, a killed
child); the tests that end a group (SIGTERM, SIGKILL to the parent) start one of their own.
Every group is SIGKILLed as a process group when its test or module ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WorkerProcess, wait_for_result
from tests.faults.harness import Cluster, cluster, unique_target
from worker.consume.processes import child_argv, default_nodename, with_nodename
from worker.dev.embedded_redis import free_port

pytestmark = pytest.mark.e2e

T = TypeVar("T")
#: Threads per process: with the sandbox's delay below, one process cannot hold every job.
THREADS = 2
#: The group's calls in flight (-c), which its two processes share.
GROUP_CONCURRENCY = 2 * THREADS
#: A sandbox delay per job, so that the jobs of a burst spread over both processes.
JOB_DELAY = 0.3


# --- child_argv ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "index", "expected"),
    [
        (["worker", "-n", "x@h", "-Q", "q"], 1, ["worker", "-n", "x-1@h", "-Q", "q"]),
        (["worker", "--hostname", "x@h"], 2, ["worker", "--hostname", "x-2@h"]),
        (
            ["worker", "--hostname=x@h", "-l", "INFO"],
            3,
            ["worker", "--hostname=x-3@h", "-l", "INFO"],
        ),
        (["worker", "-n", "x@%h"], 2, ["worker", "-n", "x-2@%h"]),
        (["worker", "-n", "bare"], 1, ["worker", "-n", "bare-1"]),
        (["worker", "-nx@h", "-Q", "q"], 2, ["worker", "-nx-2@h", "-Q", "q"]),
    ],
)
def test_child_argv_gives_each_child_its_own_node_name(
    argv: list[str], index: int, expected: list[str]
) -> None:
    before = list(argv)
    assert child_argv(argv, index) == expected
    assert argv == before  # the parent's arguments are left alone for the next child


def test_without_a_node_name_each_worker_takes_one_of_its_own() -> None:
    unique = re.compile(rf"streamctl-{os.getpid()}-[0-9a-f]{{4}}@%h")
    named = with_nodename(["worker", "-Q", "q"])
    assert named[:3] == ["worker", "-Q", "q"] and named[3] == "--hostname"
    assert unique.fullmatch(named[4]), named
    # Two commands (two processes, or two containers with the same pid) never share one.
    assert len({default_nodename() for _ in range(20)}) > 1
    # The group's name, taken once in the parent, numbered per child.
    name, _, host = named[4].partition("@")
    assert child_argv(named, 3)[4] == f"{name}-3@{host}"
    assert re.fullmatch(rf"streamctl-{os.getpid()}-[0-9a-f]{{4}}-1@%h", child_argv(["w"], 1)[2])


@pytest.mark.parametrize(
    "argv", [["-n", "a@h"], ["--hostname", "a@h"], ["--hostname=a@h"], ["-na@h"]]
)
def test_a_node_name_given_wins(argv: list[str]) -> None:
    assert with_nodename(["worker", *argv]) == ["worker", *argv]


# --- helpers --------------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, log: WorkerProcess | None = None
) -> T:
    """``probe()``'s first truthy value, polled; fails the test after ``timeout`` seconds
    (showing the end of ``log``'s output then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "" if log is None else "\n" + log.log()[-3000:]
            raise AssertionError(f"{what}: not within {timeout} s{tail}")
        time.sleep(0.1)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from /proc, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]  # the name in parentheses may hold spaces
    return state, int(ppid)


def running(pid: int) -> bool:
    """``pid`` exists and has not exited (a zombie has: nobody reaped it yet)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children_of(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] != "Z":
                found.add(int(entry.name))
    return found


def node_pids(fleet: Cluster) -> dict[str, int]:
    """Node name -> pid of every worker on the cluster's broker that answers."""
    stats = fleet.app.control.inspect(timeout=1.0).stats() or {}
    return {node: int(info["pid"]) for node, info in stats.items()}


def pinged(fleet: Cluster) -> set[str]:
    replies = fleet.app.control.ping(timeout=1.0) or []
    return {node for reply in replies for node, answer in reply.items() if answer == {"ok": "pong"}}


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free (on every interface, as the exporter binds)."""
    for _ in range(100):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("0.0.0.0", port))
                second.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def kill_group(worker: WorkerProcess) -> None:
    """SIGKILL the command's process group: the parent and every child, even orphaned ones."""
    process = worker.process
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def worker_group(
    fleet: Cluster, name: str, env: dict[str, str] | None = None
) -> Iterator[WorkerProcess]:
    """``streamctl worker --processes 2 -c 4 -n <name>@%h`` on ``fleet``, both children up."""
    worker = WorkerProcess(
        fleet.root / f"{name}.log",
        concurrency=GROUP_CONCURRENCY,
        env={**fleet.env, **(env or {})},
        args=("--processes", "2", "-n", f"{name}@%h"),
    )
    try:
        worker.start()  # returns at the first child's "ready."
        wanted = nodes(name)
        wait_until(lambda: wanted <= pinged(fleet), 30, f"{sorted(wanted)} answering", worker)
        yield worker
    finally:
        kill_group(worker)


def nodes(name: str) -> set[str]:
    host = socket.gethostname()
    return {f"{name}-1@{host}", f"{name}-2@{host}"}


def parent_pid(worker: WorkerProcess) -> int:
    assert worker.process is not None
    return worker.process.pid


def close_slowly(fleet: Cluster, sandbox: Any, count: int) -> list[str]:
    """Enqueue ``count`` closes, each answered after JOB_DELAY; return their job ids."""
    targets = [unique_target("procs") for _ in range(count)]
    for target in targets:
        sandbox.inject(target, "slow", delay=JOB_DELAY)
    return [
        fleet.producer.close(app=target["app"], inst=target["inst"], stream=target["stream"])
        for target in targets
    ]


def pid_of(result: dict[str, Any]) -> int:
    host, _, pid = result["worker"].rpartition(":")
    assert host == socket.gethostname(), result["worker"]
    return int(pid)


# --- fixtures -------------------------------------------------------------------------------


@dataclass
class Group:
    fleet: Cluster
    worker: WorkerProcess
    name: str
    metrics_port: int


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("processes")) as made:
        yield made


@pytest.fixture(scope="module")
def group(fleet: Cluster) -> Iterator[Group]:
    port = two_free_ports()
    name = f"procs-{secrets.token_hex(3)}"
    with worker_group(fleet, name, {"STREAMCTL_METRICS_PORT": str(port)}) as worker:
        yield Group(fleet, worker, name, port)


# --- a running group ------------------------------------------------------------------------


def test_two_named_nodes_share_the_jobs(group: Group, sandbox: Any) -> None:
    fleet, parent = group.fleet, parent_pid(group.worker)
    assert pinged(fleet) == nodes(group.name)
    by_node = node_pids(fleet)
    assert by_node.keys() == nodes(group.name)
    assert len(set(by_node.values())) == 2
    assert children_of(parent) == set(by_node.values())

    jobs = close_slowly(fleet, sandbox, 12)
    results = [wait_for_result(fleet.producer, job_id, timeout=30) for job_id in jobs]

    assert [r["outcome"] for r in results] == ["success"] * 12, results
    pids = {pid_of(r) for r in results}
    assert pids == set(by_node.values()), (pids, by_node)
    for pid in pids:
        stat = proc_stat(pid)
        assert stat is not None and stat[1] == parent, (pid, stat)


def _metric(port: int, name: str, **labels: str) -> float | None:
    """A sample from the exporter on ``port``, or None when it is not there (or not up yet)."""
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except requests.ConnectionError:
        return None
    assert reply.status_code == 200, reply.text[:500]
    assert "streamctl_" in reply.text
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0  # a counter not sampled yet


def test_each_process_serves_metrics_on_its_own_port(group: Group, sandbox: Any) -> None:
    ports = (group.metrics_port, group.metrics_port + 1)
    successes = "streamctl_jobs_total"

    def counts() -> list[float] | None:
        found = [_metric(port, successes, outcome="success") for port in ports]
        return None if None in found else [value or 0.0 for value in found]

    before = wait_until(counts, 15, f"metrics on ports {ports}", group.worker)
    jobs = close_slowly(group.fleet, sandbox, 8)
    results = [wait_for_result(group.fleet.producer, job_id, timeout=30) for job_id in jobs]
    assert [r["outcome"] for r in results] == ["success"] * 8, results

    after = counts()
    assert after is not None
    # Two exporters, each counting its own process's jobs: both ran some, together all of them.
    added = [now - then for now, then in zip(after, before, strict=True)]
    assert all(count > 0 for count in added), added
    assert sum(added) == 8, added


def test_a_killed_child_is_replaced_under_its_node_name(group: Group, sandbox: Any) -> None:
    # Last of the shared group's tests: it leaves a replacement child behind.
    fleet, parent = group.fleet, parent_pid(group.worker)
    node = f"{group.name}-1@{socket.gethostname()}"
    old = node_pids(fleet)[node]
    os.kill(old, signal.SIGKILL)

    def replaced() -> int | None:
        pid = node_pids(fleet).get(node)
        return pid if pid is not None and pid != old else None

    new = wait_until(replaced, 15, f"a new {node}", group.worker)
    assert not running(old)
    stat = proc_stat(new)
    assert stat is not None and stat[1] == parent
    assert node in pinged(fleet)
    assert group.worker.alive()

    [job_id] = close_slowly(fleet, sandbox, 1)
    assert wait_for_result(fleet.producer, job_id, timeout=30)["outcome"] == "success"


# --- ending a group -------------------------------------------------------------------------


def test_sigterm_to_the_parent_stops_every_process_and_exits_0(fleet: Cluster) -> None:
    with worker_group(fleet, f"procs-term-{secrets.token_hex(3)}") as worker:
        parent = parent_pid(worker)
        children = children_of(parent)
        assert len(children) == 2
        os.kill(parent, signal.SIGTERM)
        assert worker.process is not None
        try:
            code = worker.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the parent did not exit within 20 s of SIGTERM\n" + worker.log()[-2000:])
        assert code == 0, worker.log()[-2000:]
        assert [pid for pid in children if running(pid)] == []


def test_children_exit_when_the_parent_is_killed(fleet: Cluster) -> None:
    with worker_group(fleet, f"procs-orphan-{secrets.token_hex(3)}") as worker:
        parent = parent_pid(worker)
        children = children_of(parent)
        assert len(children) == 2
        os.kill(parent, signal.SIGKILL)  # the parent only, not its process group
        assert worker.process is not None
        worker.process.wait()

        def all_gone() -> bool:
            return not any(running(pid) for pid in children)

        wait_until(all_gone, 15, "the orphaned children exiting", worker)


# --- -c is the whole command's calls in flight ----------------------------------------------


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        # auto: one process per 250 calls in flight, at most one per CPU.
        (("-c", "251"), {1: [251], 2: [126, 125]}),
        (("-c", "5", "--processes", "2"), {1: [3, 2], 2: [3, 2]}),
    ],
)
def test_the_calls_in_flight_are_split_over_the_processes(
    fleet: Cluster, args: tuple[str, ...], wanted: dict[int, list[int]]
) -> None:
    from config.processes import usable_cpus

    shares = wanted[min(usable_cpus(), 2)]
    name = f"split{len(shares)}x{secrets.token_hex(2)}"
    concurrency, *more = args[1:]
    worker = WorkerProcess(
        fleet.root / f"{name}.log",
        concurrency=int(concurrency),
        env=fleet.env,
        args=(*more, "-n", f"{name}@%h"),
    )
    try:
        worker.start()
        host = socket.gethostname()
        if len(shares) == 1:  # one process: the node keeps its name
            expected = {f"{name}@{host}": shares[0]}
        else:
            expected = {f"{name}-{i}@{host}": share for i, share in enumerate(shares, start=1)}
        wait_until(lambda: set(expected) <= pinged(fleet), 30, f"{sorted(expected)}", worker)
        sizes = {
            node: size
            for node, size in (fleet.app.control.inspect(timeout=2.0).stats() or {}).items()
            if node in expected
        }
        assert {n: s["pool"]["max-concurrency"] for n, s in sizes.items()} == expected
    finally:
        kill_group(worker)
