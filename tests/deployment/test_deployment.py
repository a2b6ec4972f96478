"""FedGuard on a real (loopback) deployment: TLS, SuperNode authentication, three SuperNodes, a crash.

One SuperLink with TLS and ``--enable-supernode-auth`` and three registered SuperNodes (own partition, own
``ledger-path``) run two FedGuard rounds with ``flwr run . <connection>`` on the default transport: one Flower
message per client per round, the 24 batches of each client's round over the ServerApp's data plane. During
round 1, as soon as the third SuperNode's ClientApp has connected to the data plane, its whole process tree
is SIGKILLed: the server must drop that client (its connection breaks), finish round 1 with the other two
(``min-fit-clients=2``) and round 2 without it, and record it in ``clients_dropped``. A SuperNode whose key was
never registered is refused.
"""

from __future__ import annotations

import time

import pytest

from fedguard.apps.local_deployment import ROOT, LoopbackDeployment, wait_for

pytestmark = pytest.mark.slow

NODES = 3
RUN_CONFIG = {  # the default transport: one Flower message per client per round, batches over the data plane
    "num-server-rounds": 2, "local-steps": 24, "exchange-batches": 1, "batch-size": 8, "eval-examples": 50,
    "min-fit-clients": 2, "round-timeout": 150.0,
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    deployment = LoopbackDeployment(tmp_path_factory.mktemp("deployment"))
    try:
        deployment.start_superlink()
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module")
def crashed_run(deployment):
    """Two rounds on three SuperNodes; the third is killed right after its first reply of round 1."""
    work = deployment.workdir
    nodes = []
    for i in range(NODES):
        key = deployment.new_key(f"sn{i}")
        nodes.append(deployment.start_supernode(
            f"sn{i}", key, f"partition-id={i} num-partitions={NODES} ledger-path='{work}/ledger-{i}.json'"))
    ids = [deployment.wait_connected(node) for node in nodes]
    out = work / "run"
    run = deployment.flwr_run(ROOT, {**RUN_CONFIG, "output-dir": str(out)})
    victim = nodes[-1]

    def victim_streaming() -> bool:
        if not run.alive():
            raise RuntimeError(f"flwr run ended before the victim streamed:\n{run.text()[-4000:]}")
        return f"data plane: node {ids[-1]} connected" in run.text()

    wait_for(victim_streaming, 240, "the third SuperNode's ClientApp on the data plane")
    victim.kill()
    killed_at = time.monotonic()
    wait_for(lambda: not run.alive(), 480, "the run to finish after the crash", interval=0.5)
    metrics = deployment.metrics(out)
    assert metrics is not None, f"the run wrote no metrics.json\n{run.text()[-4000:]}"
    return {"metrics": metrics, "ids": ids, "victim": ids[-1], "log": run.text(), "out": out,
            "after_kill": time.monotonic() - killed_at}


def test_two_rounds_finish_over_tls_with_authenticated_supernodes(crashed_run):
    metrics = crashed_run["metrics"]
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2], crashed_run["log"][-3000:]
    for entry in rounds:
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert entry["bytes_up"] > 0 and entry["bytes_down"] > 0
        assert entry["aggregated"] and entry["clients_aggregated"] == 2, entry
        assert entry["exchanges"] == 24 + 1 and entry["transport"] == "stream", entry
    assert "final_accuracy" in metrics and metrics["initial"]["eval_examples"] == 50
    assert (crashed_run["out"] / "adapter" / "adapter_config.json").exists()


def test_killed_supernode_is_dropped_and_the_run_goes_on(crashed_run):
    first, second = crashed_run["metrics"]["rounds"]
    victim = crashed_run["victim"]
    assert first["clients_sampled"] == NODES, first
    assert victim in first["clients_dropped"], first["clients_dropped"]
    assert first["clients_aggregated"] == 2 and first["aggregated"], first
    # Round 2 either no longer samples the dead node (Flower marked it offline) or drops it again.
    assert second["aggregated"] and second["clients_aggregated"] == 2, second


def test_dropped_client_is_reported_once_under_its_own_node_id(crashed_run):
    first = crashed_run["metrics"]["rounds"][0]
    victim = crashed_run["victim"]
    assert set(first["clients_dropped"]) == {victim}, first["clients_dropped"]
    reason = first["clients_dropped"][victim].lower()
    assert "data plane" in reason or "unavailable" in reason, first["clients_dropped"]


def test_unregistered_supernode_is_refused(deployment):
    key = deployment.new_key("rogue", register=False)
    rogue = deployment.start_supernode("rogue", key, "partition-id=0 num-partitions=3")
    try:
        wait_for(lambda: not rogue.alive(), 90, "the unregistered SuperNode to be refused and exit")
        log = rogue.text()
        assert rogue.popen.returncode != 0, log[-2000:]
        # Flower exit code 305: the SuperNode could not connect; [code: 2004]: activation refused.
        assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log, log[-2000:]
        assert deployment.node_id(rogue) is None, log[-2000:]
        assert "No SuperNode found with the given public key" in deployment.processes[0].text()
    finally:
        rogue.kill()  # its SuperExec child would otherwise keep retrying
