"""Resilience end to end, with a real Envoy passing datagrams: a configuration Envoy really rejects,
and the control plane killed (SIGKILL), restarted, and stopped (SIGTERM) under traffic.

Envoy's own admin stats are the witness: `control_plane.connected_state`, and per xDS type
`update_success`, `update_rejected` and `version_text` (what Envoy accepted, and how often).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.e2e import (
    ControlPlane,
    Envoy,
    answers,
    endpoint,
    fresh_socket,
    send_until_answer,
    virtual_service,
    wait_until,
)
from tests.support.e2e import free_udp_port as free_port
from xds_operator.app.shutdown import EXIT_DEADLINE_SECONDS

RECONNECT = 30.0  # Envoy reconnects with its own jittered exponential backoff (0.5 s base)
CONFIG_STATS = (
    "cluster_manager.cds.update_success",
    "cluster_manager.cds.update_rejected",
    "cluster_manager.cds.version_text",
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
    "listener_manager.lds.version_text",
)


def envoy_stats(envoy: Envoy) -> dict[str, str]:
    """Envoy's xDS stats: name → value as text."""
    text = envoy.get("/stats?filter=" + re.escape("control_plane.") + "|" + r"\.(cds|lds)\.")
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def config_stats(envoy: Envoy) -> dict[str, str]:
    stats = envoy_stats(envoy)
    return {name: stats[name] for name in CONFIG_STATS}


def connected(envoy: Envoy) -> bool:
    return envoy_stats(envoy)["control_plane.connected_state"] == "1"


def proxy_types(plane: ControlPlane, node_id: str) -> dict[str, dict] | None:
    """The control plane's view of one proxy's types (CDS, LDS, ...), or None while it is not connected."""
    status, body = plane.get("/debug/proxies")
    if status != 200:
        return None
    found = [proxy["types"] for proxy in json.loads(body) if proxy["node_id"] == node_id]
    return found[0] if found else None


def all_acked(plane: ControlPlane, envoy: Envoy) -> dict[str, dict] | None:
    """The proxy's types once CDS and LDS are both ACKed (an Envoy at rest), else None."""
    types = proxy_types(plane, envoy.node_id)
    if types and {"CDS", "LDS"} <= types.keys() and all(t["state"] == "ACKed" for t in types.values()):
        return types
    return None


class Traffic(threading.Thread):
    """One UDP session through Envoy: a numbered datagram every 20 ms, each waited for; (sent at, answered)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.sock = fresh_socket()
        self.sock.settimeout(2.0)  # an answer later than this counts as lost
        self.log: list[tuple[float, bool]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.halt.is_set():
            number += 1
            payload = f"seq-{number}".encode()
            sent = time.monotonic()
            self.sock.sendto(payload, ("127.0.0.1", self.port))
            answered = False
            try:
                while not answered:  # a late answer to an earlier datagram is skipped
                    answered = self.sock.recv(65535).endswith(b": " + payload)
            except (TimeoutError, ConnectionRefusedError):
                pass
            self.log.append((sent, answered))
            self.halt.wait(0.02)

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(datagrams sent, datagrams answered) in [start, end]."""
        window = [answered for sent, answered in list(self.log) if start <= sent <= end]
        return len(window), sum(window)


@contextmanager
def traffic(port: int) -> Iterator[Traffic]:
    flow = Traffic(port)
    flow.start()
    try:
        wait_until(lambda: any(answered for _, answered in flow.log), f"datagrams to port {port} to be answered")
        yield flow
    finally:
        flow.halt.set()
        flow.join(timeout=5)
        flow.sock.close()


# ---------------------------------------------------------------- a real NACK


def test_a_listener_envoy_cannot_bind_is_nacked_the_last_good_config_serves_and_the_fix_applies(
    envoy, control_plane, workers, vs_files
):
    a = workers("worker-a")
    good_port = free_port()
    vs_files.write("good.yaml", virtual_service("good", good_port, [endpoint(a, health=False)]))
    envoy.wait_listener("good-l", good_port)
    assert send_until_answer(good_port) == "worker-a"
    good = wait_until(lambda: all_acked(control_plane, envoy), "Envoy to ACK the good config")

    # A socket on the port without SO_REUSEPORT: Envoy's listener sockets (which set it) cannot bind.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", 0))
        held_port = holder.getsockname()[1]
        rejected_before = int(envoy_stats(envoy)["listener_manager.lds.update_rejected"])
        vs_files.write("taken.yaml", virtual_service("taken", held_port, [endpoint(a, health=False)]))

        def nacked() -> dict | None:
            types = proxy_types(control_plane, envoy.node_id) or {}
            lds = types.get("LDS", {})
            return lds if lds.get("state") == "NACKed" else None

        lds = wait_until(nacked, "the control plane to record Envoy's NACK of LDS")
        assert int(envoy_stats(envoy)["listener_manager.lds.update_rejected"]) > rejected_before  # Envoy's own word
        assert "taken-l" in lds["error"] and f"cannot bind '0.0.0.0:{held_port}'" in lds["error"], lds
        lines = [line for line in control_plane.log().splitlines() if "NACKed LDS" in line]
        assert any(envoy.node_id in line and f"0.0.0.0:{held_port}" in line for line in lines), lines

        # The last good config keeps serving: the old listener answers, the rejected one is not there.
        assert set(envoy.listeners()) == {"good-l"}
        assert set(answers(good_port, 5)) == {"worker-a"}
        assert proxy_types(control_plane, envoy.node_id)["CDS"]["state"] == "ACKed"

    # The next good snapshot is applied: the listener moves to a free port, Envoy ACKs it and it answers.
    fixed_port = free_port()
    vs_files.write("taken.yaml", virtual_service("taken", fixed_port, [endpoint(a, health=False)]))
    assert send_until_answer(fixed_port) == "worker-a"
    fixed = wait_until(lambda: all_acked(control_plane, envoy), "Envoy to ACK the fixed config")
    assert fixed["LDS"]["error"] is None and fixed["LDS"]["version"] != good["LDS"]["version"]
    assert set(envoy.listeners()) == {"good-l", "taken-l"}
    assert set(answers(good_port, 3)) == {"worker-a"}


# ---------------------------------------------------------------- restarts


def kill(plane: ControlPlane) -> float:
    """SIGKILL the control plane; return when."""
    assert plane.process is not None
    killed = time.monotonic()
    plane.process.kill()
    plane.process.wait(timeout=10)
    return killed


def reconnected(plane: ControlPlane, envoy: Envoy) -> dict[str, dict]:
    """Wait until Envoy is back on a stream and the control plane has its state: both ACKed, nothing to send."""
    wait_until(lambda: connected(envoy), "Envoy to reconnect to the control plane", RECONNECT)
    return wait_until(lambda: all_acked(plane, envoy), "the control plane to see Envoy's versions", RECONNECT)


def test_sigkill_leaves_traffic_flowing_and_a_restart_pushes_only_what_changed(envoy, control_plane, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    before = wait_until(lambda: all_acked(control_plane, envoy), "Envoy to ACK its config")
    stats_before = config_stats(envoy)

    with traffic(port) as flow:
        # 1. Killed and started again with nothing changed: Envoy keeps forwarding on what it has,
        # reconnects, and is sent nothing (content-hash versions are the same after a restart).
        killed = kill(control_plane)
        wait_until(lambda: not connected(envoy), "Envoy to notice the control plane is gone")
        noticed = time.monotonic()
        # Stay down while some datagrams go through (counted, not timed).
        wait_until(lambda: flow.between(noticed, time.monotonic())[1] >= 25, "datagrams to flow while it is down")
        control_plane.spawn()
        control_plane.wait_ready()
        after = reconnected(control_plane, envoy)
        back = time.monotonic()
        sent, answered = flow.between(killed, back)
        assert sent > 0 and answered == sent, f"{sent - answered} of {sent} datagrams lost while disconnected"
        assert {t: after[t]["version"] for t in after} == {t: before[t]["version"] for t in before}
        assert config_stats(envoy) == stats_before, "a reconnect must not re-push unchanged config"
        print(
            f"\nFIGURE sigkill-outage seconds={back - killed:.2f} datagrams_sent={sent} "
            f"answered={answered} (from SIGKILL until Envoy is back on a stream)"
        )

        # 2. Killed, the cluster edited while it is down (worker-b added), started again: the
        # change is applied and only it (CDS); the unchanged listener is not sent again.
        killed = kill(control_plane)
        vs_files.write(
            "calls.yaml", virtual_service("calls", port, [endpoint(a, health=False), endpoint(b, health=False)])
        )
        control_plane.spawn()
        control_plane.wait_ready()
        wait_until(lambda: connected(envoy), "Envoy to reconnect after the second restart", RECONNECT)
        envoy.wait_hosts("calls-c", {a.port, b.port}, RECONNECT)
        changed = wait_until(lambda: all_acked(control_plane, envoy), "Envoy to ACK the change")
        sent, answered = flow.between(killed, time.monotonic())
        assert sent > 0 and answered == sent, f"{sent - answered} of {sent} datagrams lost around the second restart"

    stats = config_stats(envoy)
    cds_successes = int(stats_before["cluster_manager.cds.update_success"])
    assert int(stats["cluster_manager.cds.update_success"]) == cds_successes + 1
    assert stats["cluster_manager.cds.version_text"] == f'"{changed["CDS"]["version"]}"'
    assert changed["CDS"]["version"] != before["CDS"]["version"]
    for name in ("listener_manager.lds.update_success", "listener_manager.lds.version_text"):
        assert stats[name] == stats_before[name], name
    send_until_answer(port, accept=lambda name: name == "worker-b")  # new sessions reach the new worker


def test_sigterm_closes_the_streams_and_exits_within_the_bound(envoy, control_plane, workers, vs_files):
    a = workers("worker-a")
    port = free_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    before = wait_until(lambda: all_acked(control_plane, envoy), "Envoy to ACK its config")
    stats_before = config_stats(envoy)
    process = control_plane.process
    assert process is not None

    with traffic(port) as flow:
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=EXIT_DEADLINE_SECONDS + 10)  # the bound, plus room for a loaded machine
        exited = time.monotonic() - signalled
        assert code == 0, control_plane.log()
        wait_until(lambda: not connected(envoy), "Envoy to see its stream end")
        gone = time.monotonic()
        wait_until(lambda: flow.between(gone, time.monotonic())[1] >= 10, "datagrams to flow with no control plane")
        sent, answered = flow.between(signalled, time.monotonic())
        assert sent > 0 and answered == sent

    # The server ended the stream itself (logged before it stopped), so Envoy could reconnect elsewhere.
    log = control_plane.log()
    drained = log.index("closing 1 xDS stream(s)")
    assert drained < log.index(f"proxy {envoy.node_id} disconnected", drained) < log.index("stopped", drained)
    print(f"\nFIGURE sigterm-exit seconds={exited:.2f} (bound {EXIT_DEADLINE_SECONDS:.0f} s)")

    # A replica behind the same address (here: the next process on the port) takes over; Envoy
    # reconnects to it and is sent nothing, its config being current.
    control_plane.spawn()
    control_plane.wait_ready()
    after = reconnected(control_plane, envoy)
    assert {t: after[t]["version"] for t in after} == {t: before[t]["version"] for t in before}
    assert config_stats(envoy) == stats_before
