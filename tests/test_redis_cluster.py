"""Redis Cluster is refused, at the worker's start and by ``streamctl check``, in plain words.

streamctl's scripts touch a job's, its batch's and its target's keys in one call; in a cluster
those keys lie in different hash slots (CROSSSLOT). A real ``redis-server --cluster-enabled
yes`` node: one is enough to be recognised.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.private_redis import PrivateRedis
from tests.test_health import statuses
from tests.test_redis_policy import STREAMCTL_WORKER, check_with, run_worker
from worker.dev.embedded_redis import free_port

REFUSAL = "Redis Cluster is not supported"


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    folder = tmp_path_factory.mktemp("cluster")
    with PrivateRedis(
        folder,
        *("--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf")),
        # The bus port defaults to the port + 10000, past 65535 for a high free port.
        *("--cluster-port", str(free_port())),
        *("--maxmemory-policy", "noeviction"),
    ) as node:
        yield node


def test_check_refuses_a_cluster_node(cluster_node: PrivateRedis) -> None:
    done = check_with(REDIS_URL=f"redis://127.0.0.1:{cluster_node.port}/0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert statuses(done.stdout)["redis-policy"] == "fail", done.stdout
    assert REFUSAL in done.stdout and "Sentinel" in done.stdout


def test_a_worker_refuses_a_cluster_node(cluster_node: PrivateRedis) -> None:
    done = run_worker(STREAMCTL_WORKER, REDIS_URL=f"redis://127.0.0.1:{cluster_node.port}/0")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert REFUSAL in output and "REDIS_URL" in output, output
    assert " ready." not in output
    assert "Traceback" not in output
