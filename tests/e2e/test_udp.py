"""End to end: VirtualService files → xds-operator → a real Envoy → UDP echo workers.

Every test asserts what a UDP client receives (each answer names the worker that echoed it),
with Envoy's admin API used only to wait for configuration to arrive.
"""

from __future__ import annotations

import json
import statistics
import time

from tests.support.e2e import (
    PROXY_LABELS,
    answers,
    assert_silent,
    endpoint,
    exchange,
    free_udp_port,
    fresh_socket,
    send_until_answer,
    virtual_service,
    wait_all_answered_by,
    wait_until,
)


def test_datagrams_reach_echo_workers_through_envoy(envoy, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False), endpoint(b, health=False)]))
    envoy.wait_listener("calls-l", port)
    envoy.wait_hosts("calls-c", {a.port, b.port})

    assert send_until_answer(port) in {"worker-a", "worker-b"}
    for i in range(10):
        payload = f"rtp-{i}".encode()
        answer, _ = exchange(port, payload, timeout=2.0)
        assert answer in {b"worker-a: " + payload, b"worker-b: " + payload}
    # No hash key: sessions from different source ports spread over both workers.
    assert set(answers(port, 20)) == {"worker-a", "worker-b"}
    assert a.received > 0 and b.received > 0


def test_hash_key_pins_every_source_port_to_one_worker(envoy, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_udp_port()
    vs_files.write(
        "calls.yaml",
        virtual_service("calls", port, [endpoint(a, health=False), endpoint(b, health=False)], hash_key="callid"),
    )
    envoy.wait_listener("calls-l", port)
    envoy.wait_hosts("calls-c", {a.port, b.port})  # both there, and (no health check) both healthy
    send_until_answer(port)

    results = [exchange(port, f"call-{i}".encode(), timeout=2.0) for i in range(50)]
    sources = {source for _, source in results}
    names = [answer.split(b": ", 1)[0].decode() if answer else None for answer, _ in results]
    assert len(sources) == 50, "each datagram should come from its own source port"
    assert None not in names, f"unanswered datagrams: {names.count(None)}"
    assert len(set(names)) == 1, f"datagrams spread over {sorted(set(names))}"


def test_health_check_failover_moves_traffic_to_the_healthy_worker(envoy, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_udp_port()
    vs_files.write(
        "calls.yaml",
        virtual_service("calls", port, [endpoint(a), endpoint(b)], hash_key="callid", health_check_ms=500),
    )
    envoy.wait_listener("calls-l", port)
    envoy.wait_healthy("calls-c", {a.port, b.port})
    chosen_name = send_until_answer(port)
    assert set(answers(port, 5)) == {chosen_name}
    chosen, other = (a, b) if chosen_name == "worker-a" else (b, a)

    chosen.close_health()
    # unhealthy_threshold 1, interval 500 ms: a few intervals (and the 1 s merge window) on an idle machine.
    wait_all_answered_by(port, other.name)
    assert set(answers(port, 10)) == {other.name}

    # Healthy again: the hash key maps to the same worker as before.
    chosen.open_health()
    wait_all_answered_by(port, chosen.name)
    assert set(answers(port, 10)) == {chosen.name}


def test_eds_cluster_with_address_endpoints_routes(envoy, workers, vs_files):
    a = workers("worker-eds")
    port = free_udp_port()
    vs_files.write("eds.yaml", virtual_service("media", port, [endpoint(a)], discovery="eds", health_check_ms=500))
    envoy.wait_listener("media-l", port)

    assert send_until_answer(port) == "worker-eds"
    assert set(answers(port, 5)) == {"worker-eds"}
    clusters = {
        entry["cluster"]["name"]: entry["cluster"]
        for config in envoy.config_dump()["configs"]
        for entry in config.get("dynamic_active_clusters", [])
    }
    assert clusters["media-c"]["type"] == "EDS"


def test_selector_that_does_not_match_never_reaches_the_proxy(start_envoy, workers, vs_files):
    ours = start_envoy(PROXY_LABELS)
    theirs = start_envoy({"app": "somebody-else"})
    a = workers("worker-a")
    match_port, other_port, partial_port = free_udp_port(), free_udp_port(), free_udp_port()
    vs_files.write("match.yaml", virtual_service("match", match_port, [endpoint(a, health=False)]))
    vs_files.write(
        "other.yaml",
        virtual_service("other", other_port, [endpoint(a, health=False)], selector={"app": "somebody-else"}),
    )
    # Every selector label must be among the proxy's labels: one more than it has is no match.
    vs_files.write(
        "partial.yaml",
        virtual_service("partial", partial_port, [endpoint(a, health=False)], selector={**PROXY_LABELS, "zone": "b"}),
    )

    ours.wait_listener("match-l", match_port)
    theirs.wait_listener("other-l", other_port)  # the other file is valid and served: to its own proxy
    assert send_until_answer(match_port) == "worker-a"
    assert send_until_answer(other_port) == "worker-a"  # through the other Envoy
    deadline = time.monotonic() + 1.0  # and it stays that way
    while time.monotonic() < deadline:
        assert set(ours.listeners()) == {"match-l"}
        assert set(theirs.listeners()) == {"other-l"}
        time.sleep(0.1)
    assert_silent(partial_port)


def test_live_edit_moves_the_listener_port(envoy, workers, vs_files):
    a = workers("worker-a")
    old_port, new_port = free_udp_port(), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", old_port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", old_port)
    assert send_until_answer(old_port) == "worker-a"

    vs_files.write("calls.yaml", virtual_service("calls", new_port, [endpoint(a, health=False)]))
    assert send_until_answer(new_port) == "worker-a"
    envoy.wait_listener("calls-l", new_port)
    wait_until(lambda: exchange(old_port, b"old?", timeout=0.2)[0] is None, "the old port to stop answering")
    assert_silent(old_port)


def test_live_edit_adds_and_removes_endpoints(envoy, workers, vs_files):
    a, b = workers("worker-a"), workers("worker-b")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    assert send_until_answer(port) == "worker-a"
    assert set(answers(port, 5)) == {"worker-a"}
    assert b.received == 0

    # Add worker-b: with no hash key, new sessions reach it too.
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False), endpoint(b, health=False)]))
    send_until_answer(port, accept=lambda name: name == "worker-b")
    assert set(answers(port, 20)) == {"worker-a", "worker-b"}

    # Remove worker-a (still alive and healthy): it stops receiving.
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(b, health=False)]))
    envoy.wait_hosts("calls-c", {b.port})
    wait_all_answered_by(port, "worker-b")
    received_by_a = a.received
    assert set(answers(port, 20)) == {"worker-b"}
    time.sleep(0.2)
    assert a.received == received_by_a


def test_deleting_the_file_removes_the_listener(envoy, workers, vs_files):
    a = workers("worker-a")
    port, kept_port = free_udp_port(), free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    vs_files.write("kept.yaml", virtual_service("kept", kept_port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    envoy.wait_listener("kept-l", kept_port)
    assert send_until_answer(port) == "worker-a"

    vs_files.delete("calls.yaml")
    envoy.wait_listener_absent("calls-l")
    wait_until(lambda: exchange(port, b"gone?", timeout=0.2)[0] is None, "the deleted listener's port to go quiet")
    assert_silent(port)
    assert "kept-l" in envoy.listeners()
    assert send_until_answer(kept_port) == "worker-a"


BAD_YAML = """\
apiVersion: servicemesh.l7mp.io/v1
kind: VirtualService
metadata: {name: broken, namespace: default}
spec:
  selector: {app: e2e-ingress
  listeners: [
"""


def test_invalid_files_leave_the_valid_one_serving(envoy, control_plane, workers, vs_files):
    a = workers("worker-a")
    good_port, bad_port = free_udp_port(), free_udp_port()
    vs_files.write("bad-yaml.yaml", BAD_YAML)
    bad = virtual_service("bad-schema", bad_port, [endpoint(a, health=False)])
    bad["spec"]["listeners"][0]["udp"]["cluster"]["endpoints"][0]["port"] = 70000
    vs_files.write("bad-schema.yaml", bad)
    vs_files.write("good.yaml", virtual_service("good", good_port, [endpoint(a, health=False)]))

    envoy.wait_listener("good-l", good_port)
    assert send_until_answer(good_port) == "worker-a"
    assert set(envoy.listeners()) == {"good-l"}

    def logged() -> bool:
        log = control_plane.log()
        return "bad-yaml.yaml" in log and "bad-schema.yaml" in log

    wait_until(logged, "the control plane to log both invalid files")
    lines = control_plane.log().splitlines()
    yaml_errors = [line for line in lines if "bad-yaml.yaml" in line and "invalid YAML" in line]
    assert yaml_errors and "line " in yaml_errors[0], lines
    schema_errors = [line for line in lines if "bad-schema.yaml" in line and "ERROR" in line]
    assert any("spec.listeners[0].udp.cluster.endpoints[0].port" in line for line in schema_errors), schema_errors

    # Breaking the valid file keeps its last valid version serving.
    vs_files.write("good.yaml", BAD_YAML.replace("broken", "good"))
    wait_until(lambda: "keeping the last valid version" in control_plane.log(), "the control plane to keep good.yaml")
    assert set(answers(good_port, 5)) == {"worker-a"}
    assert set(envoy.listeners()) == {"good-l"}


def test_envoy_logs_no_deprecated_field(envoy, workers, vs_files):
    a, b, c = workers("worker-a"), workers("worker-b"), workers("worker-c")
    strict_port, eds_port = free_udp_port(), free_udp_port()
    vs_files.write(
        "calls.yaml",
        [
            virtual_service("strict", strict_port, [endpoint(a), endpoint(b)], hash_key="callid", health_check_ms=500),
            virtual_service("eds", eds_port, [endpoint(c)], discovery="eds", health_check_ms=500),
        ],
    )
    envoy.wait_listener("strict-l", strict_port)
    envoy.wait_listener("eds-l", eds_port)
    assert send_until_answer(strict_port) in {"worker-a", "worker-b"}
    assert send_until_answer(eds_port) == "worker-c"

    envoy.stop()  # Envoy flushes its log file on exit
    log = envoy.log()
    assert "'strict-l'" in log and "'eds-l'" in log, "Envoy's log should show the listeners being added"
    offending = [line for line in log.splitlines() if "Deprecated field" in line or "deprecated option" in line]
    assert not offending, "\n".join(offending)


def test_measure_edit_to_serve(envoy, workers, vs_files):
    """Not a timing assertion: prints the median time from a file edit to Envoy answering on the new port."""
    a = workers("worker-a")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    envoy.wait_listener("calls-l", port)
    send_until_answer(port)

    samples = []
    for edit in range(5):
        port = free_udp_port()
        with fresh_socket() as sock:
            sock.settimeout(0.005)
            started = time.perf_counter()
            vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
            deadline = started + 30.0
            sent = 0
            while True:
                assert time.perf_counter() < deadline, f"edit {edit}: port {port} never answered"
                sock.sendto(f"edit-{edit}-{sent}".encode(), ("127.0.0.1", port))
                sent += 1
                try:
                    answer = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    continue
                samples.append((time.perf_counter() - started) * 1000)
                assert answer.startswith(b"worker-a: edit-")
                break
        envoy.wait_listener("calls-l", port)
    print(
        f"\nFIGURE edit-to-serve median_ms={statistics.median(samples):.0f} "
        f"samples_ms={[round(sample) for sample in samples]}"
    )


def test_envoy_speaks_the_chosen_ads_variant(envoy, control_plane, ads_variant, workers, vs_files):
    a = workers("worker-a")
    port = free_udp_port()
    vs_files.write("calls.yaml", virtual_service("calls", port, [endpoint(a, health=False)]))
    assert send_until_answer(port) == "worker-a"

    def proxy() -> dict | None:
        # Envoy may pass datagrams a moment before its ACK of the listener reaches the control plane.
        status, body = control_plane.get("/debug/proxies")
        assert status == 200, body
        (found,) = json.loads(body)
        return found if {state["state"] for state in found["types"].values()} == {"ACKed"} else None

    assert wait_until(proxy, "the proxy to ACK everything it was sent")["variant"] == ads_variant
