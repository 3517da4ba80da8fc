"""The `xds-operator` command line: bootstrap (checked by the real Envoy), validate, --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cli import SAMPLES, run
from tests.support.paths import ENVOY
from tests.support.vs import listener_spec, vs_document


def envoy_validate(tmp_path: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    """The real Envoy's verdict on a bootstrap (`envoy --mode validate`)."""
    config = tmp_path / "bootstrap.yaml"
    config.write_text(bootstrap)
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- bootstrap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xds_address", ["127.0.0.1:18000", "[::1]:18000", "xds-operator.system.svc:18000"], ids=["ipv4", "ipv6", "dns"]
)
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, capsys: pytest.CaptureFixture[str], xds_address: str) -> None:
    assert ENVOY.is_file(), f"no envoy binary at {ENVOY}"
    status, out, err = run(
        ["bootstrap", "--node-id", "ingress-0", "--label", "app=envoy-ingress", "--xds-address", xds_address], capsys
    )
    assert status == 0, err
    result = envoy_validate(tmp_path, out)
    assert result.returncode == 0, f"envoy rejected the bootstrap:\n{result.stdout}\n{result.stderr}\n---\n{out}"
    assert "Deprecated field" not in result.stdout + result.stderr


def test_bootstrap_is_delta_by_default_sotw_on_request_and_envoy_accepts_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags, api_type in (([], "DELTA_GRPC"), (["--delta"], "DELTA_GRPC"), (["--sotw"], "GRPC")):
        status, out, err = run(["bootstrap", "--node-id", "ingress-0", *flags], capsys)
        assert status == 0, err
        assert yaml.safe_load(out)["dynamic_resources"]["ads_config"]["api_type"] == api_type
        result = envoy_validate(tmp_path, out)
        assert result.returncode == 0, f"envoy rejected the bootstrap:\n{result.stdout}\n{result.stderr}"
    status, _, err = run(["bootstrap", "--node-id", "ingress-0", "--delta", "--sotw"], capsys)
    assert status == 2 and "not allowed with argument" in err


def test_bootstrap_labels_and_node(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        [
            "bootstrap",
            "--node-id",
            "media/ingress-0",
            "--label",
            "app=envoy-ingress",
            "--label",
            "zone=eu-1",
            "--label",
            "enabled=true",
            "--label",
            "expr=a=b",
            "--label",
            "empty=",
            "--cluster",
            "edge",
            "--xds-address",
            "10.0.0.5:18001",
        ],
        capsys,
    )
    assert status == 0
    config = yaml.safe_load(out)
    assert config["node"]["id"] == "media/ingress-0"
    assert config["node"]["cluster"] == "edge"
    # Label values stay strings (a YAML `true` would not match a selector value "true").
    assert config["node"]["metadata"]["labels"] == {
        "app": "envoy-ingress",
        "zone": "eu-1",
        "enabled": "true",
        "expr": "a=b",
        "empty": "",
    }
    [endpoint] = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "10.0.0.5", "port_value": 18001}
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"  # the default


@pytest.mark.parametrize("address", ["host:0", "host:65536", ":18000", "host:port", "host:", "[nope]:1"])
def test_bootstrap_bad_xds_address(capsys: pytest.CaptureFixture[str], address: str) -> None:
    status, out, err = run(["bootstrap", "--node-id", "n", "--xds-address", address], capsys)
    assert status == 2
    assert out == ""
    assert f"--xds-address {address!r}: expected HOST or HOST:PORT with a port in 1..65535" in err


def test_bootstrap_an_ipv6_address_with_a_port_needs_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["bootstrap", "--node-id", "n", "--xds-address", "::1:18000"], capsys)
    assert status == 2
    assert "--xds-address '::1:18000': not an IPv6 address; with a port, write [ADDRESS]:PORT" in err


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("xds.example", "xds.example", 18000), ("::1", "::1", 18000), ("[::1]", "::1", 18000), ("[::1]:5", "::1", 5)],
)
def test_bootstrap_xds_address_without_a_port_is_the_default_port(
    capsys: pytest.CaptureFixture[str], address: str, host: str, port: int
) -> None:
    # serve takes a host; bootstrap used to refuse one ("expected HOST:PORT").
    status, out, err = run(["bootstrap", "--node-id", "n", "--xds-address", address], capsys)
    assert status == 0, err
    [endpoint] = yaml.safe_load(out)["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0][
        "lb_endpoints"
    ]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": host, "port_value": port}


def test_bootstrap_bad_label(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["bootstrap", "--node-id", "n", "--label", "novalue"], capsys)
    assert status == 2
    assert out == ""
    assert "argument --label: 'novalue' is not KEY=VALUE (no '=')" in err


def bootstrap_labels(out: str) -> dict[str, str]:
    return yaml.safe_load(out)["node"]["metadata"]["labels"]


def test_bootstrap_labels_from_env_merge_with_label_which_wins(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_LABELS", " app=envoy-ingress , zone = eu-1,empty=,expr=a=b,  tier=edge ,")
    status, out, err = run(
        ["bootstrap", "--node-id", "n", "--labels-from-env", "PROXY_LABELS", "--label", "tier=core", "--label", "x=1"],
        capsys,
    )
    assert (status, err) == (0, "")
    assert bootstrap_labels(out) == {
        "app": "envoy-ingress",
        "zone": "eu-1",
        "empty": "",
        "expr": "a=b",
        "tier": "core",  # the explicit --label, not the variable's edge
        "x": "1",
    }


def test_bootstrap_labels_from_an_empty_variable_is_no_labels(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_LABELS", "  ")
    status, out, _ = run(["bootstrap", "--node-id", "n", "--labels-from-env", "PROXY_LABELS"], capsys)
    assert status == 0
    assert bootstrap_labels(out) == {}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("app=envoy,zone", "'zone' is not KEY=VALUE (no '=')"),
        ("app=envoy, =eu-1", "'=eu-1' has an empty key"),
        ("app=envoy,app=other", "key 'app' appears twice"),
    ],
    ids=["missing =", "empty key", "repeated key"],
)
def test_bootstrap_labels_from_env_bad_item(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("PROXY_LABELS", value)
    status, out, err = run(["bootstrap", "--node-id", "n", "--labels-from-env", "PROXY_LABELS"], capsys)
    assert (status, out) == (2, "")
    assert err.strip() == (
        f"xds-operator bootstrap: --labels-from-env PROXY_LABELS (environment variable PROXY_LABELS): {problem}"
    )


def test_bootstrap_labels_from_an_unset_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_LABELS", raising=False)
    status, out, err = run(["bootstrap", "--node-id", "n", "--labels-from-env", "NO_SUCH_LABELS"], capsys)
    assert (status, out) == (2, "")
    assert "--labels-from-env NO_SUCH_LABELS: the environment variable NO_SUCH_LABELS is not set" in err


def test_bootstrap_labels_from_env_as_a_real_process(tmp_path: Path) -> None:
    """The variable is read from the process's own environment; Envoy accepts the result."""
    result = subprocess.run(
        [sys.executable, "-m", "xds_operator.cli", "bootstrap", "--node-id", "n", "--labels-from-env", "LABELS"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LABELS": "app=envoy-ingress,tier=edge"},
    )
    assert result.returncode == 0, result.stderr
    assert bootstrap_labels(result.stdout) == {"app": "envoy-ingress", "tier": "edge"}
    checked = envoy_validate(tmp_path, result.stdout)
    assert checked.returncode == 0, f"envoy rejected the bootstrap:\n{checked.stdout}\n{checked.stderr}"


def test_bootstrap_y_and_n_stay_strings_for_envoy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Envoy's YAML parser reads a plain y or n as a boolean (a node id `n` was rejected): they are quoted."""
    status, out, _ = run(["bootstrap", "--node-id", "n", "--label", "canary=y", "--label", "Y=N"], capsys)
    assert status == 0
    assert bootstrap_labels(out) == {"canary": "y", "Y": "N"}
    checked = envoy_validate(tmp_path, out)
    assert checked.returncode == 0, f"envoy rejected the bootstrap:\n{checked.stdout}\n{checked.stderr}"


def test_bootstrap_help_explains_labels_from_env(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["bootstrap", "--help"], capsys)
    text = " ".join(out.split())
    assert "--labels-from-env VAR" in text
    assert "k1=v1,k2=v2" in text and "explicit --label wins" in text


def test_bootstrap_requires_node_id(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["bootstrap"], capsys)
    assert status == 2
    assert "--node-id" in err


# -- validate -------------------------------------------------------------------------------


def test_validate_samples(capsys: pytest.CaptureFixture[str]) -> None:
    assert SAMPLES
    status, out, err = run(["validate", *map(str, SAMPLES)], capsys)
    assert status == 0, err
    assert err == ""
    for sample in SAMPLES:
        assert f"{sample}: " in out and "0 problem(s)" in out


def test_validate_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = yaml.safe_load(SAMPLES[0].read_text())
    document["spec"]["listeners"][0]["udp"]["cluster"]["endpoints"][1]["host"]["selector"] = {"app": "worker"}
    document["spec"]["listeners"][0]["udp"]["port"] = 70000
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    status, out, err = run(["validate", str(SAMPLES[0]), str(bad)], capsys)
    assert status == 1
    name = document["metadata"]["name"]
    assert f"{bad}: document 1 (default/{name}): spec.listeners[0].udp.port: must be at most 65535, got 70000" in err
    assert (
        f"{bad}: document 1 (default/{name}): spec.listeners[0].udp.cluster.endpoints[1].host: "
        "set exactly one of address, selector"
    ) in err
    assert f"{bad}: 0 valid VirtualService(s), 2 problem(s)" in out
    assert f"{SAMPLES[0]}: 1 valid VirtualService(s), 0 problem(s)" in out


def test_validate_unreadable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec: [unclosed\n")
    status, _, err = run(["validate", str(bad)], capsys)
    assert status == 1
    assert f"{bad}: invalid YAML: line 2" in err


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["validate", str(tmp_path / "absent.yaml")], capsys)
    assert status == 1
    assert f"{tmp_path / 'absent.yaml'}: no such file" in err


def test_validate_an_empty_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    status, out, err = run(["validate", str(empty), str(SAMPLES[0])], capsys)
    assert status == 1
    assert f"{empty}: no VirtualService in it: the file is empty" in err
    assert f"{empty}: 0 valid VirtualService(s), 1 problem(s)" in out


def test_validate_fails_when_nothing_holds_a_virtualservice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kustomization = tmp_path / "kustomization.yaml"
    kustomization.write_text("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
    status, out, err = run(["validate", str(tmp_path)], capsys)
    assert status == 1
    assert f"xds-operator validate: no VirtualService found in {tmp_path}" in err
    assert f"{kustomization}: 0 valid VirtualService(s), 1 document(s) of other kinds skipped, 0 problem(s)" in out


def test_validate_a_kind_typo_is_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text(SAMPLES[0].read_text().replace("kind: VirtualService", "kind: VirtualServices"))
    status, _, err = run(["validate", str(typo)], capsys)
    assert status == 1
    assert "kind: must be 'VirtualService', got 'VirtualServices'" in err


def write_documents(path: Path, *documents: dict) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_validate_reports_a_conflict_between_files_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # serve leaves the younger one out with a warning; validate, run in CI to catch it, used to pass.
    older = write_documents(
        tmp_path / "a.yaml", vs_document("older", [listener_spec("a-l", 2000, "a-c")], created="2024-01-01T00:00:00Z")
    )
    newer = write_documents(
        tmp_path / "b.yaml", vs_document("newer", [listener_spec("b-l", 2000, "b-c")], created="2024-02-01T00:00:00Z")
    )
    status, out, err = run(["validate", str(older), str(newer)], capsys)
    assert status == 1
    assert (
        f"{newer}: VirtualService media/newer conflicts: UDP port 2000 is already used by the older VirtualService "
        f"media/older (in {older}); serve would leave it out"
    ) in err
    assert f"{older}: 1 valid VirtualService(s), 0 problem(s)" in out


def test_validate_finds_a_conflict_on_proxies_two_different_selectors_both_select(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only a proxy labelled app=ingress AND zone=a gets both: the conflict is there all the same.
    write_documents(
        tmp_path / "a.yaml",
        vs_document("by-app", [listener_spec("a-l", 2000, "a-c")], selector={"app": "ingress"}),
        vs_document("by-zone", [listener_spec("a-l", 3000, "b-c")], selector={"zone": "a"}),
    )
    status, _, err = run(["validate", str(tmp_path)], capsys)
    assert status == 1
    assert "conflicts: listener a-l is already used by the older VirtualService" in err


def test_validate_accepts_a_cluster_shared_with_an_identical_definition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_documents(tmp_path / "a.yaml", vs_document("one", [listener_spec("a-l", 2000, "shared-c")]))
    write_documents(tmp_path / "b.yaml", vs_document("two", [listener_spec("b-l", 3000, "shared-c")]))
    status, _, err = run(["validate", str(tmp_path)], capsys)
    assert status == 0, err
    assert err == ""


def test_validate_as_a_real_process(tmp_path: Path) -> None:
    """The module runs as a program and its exit status is the validation result."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(SAMPLES[0].read_text().replace("interval: 500", "interval: 100"))
    command = [sys.executable, "-m", "xds_operator.cli", "validate"]
    good = subprocess.run([*command, *map(str, SAMPLES)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1
    assert "spec.listeners[0].udp.cluster.health_check.interval: must be at least 500, got 100" in failed.stderr


# -- global options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["serve"], ["validate", "f.yaml"], ["render", "f.yaml"], ["status"], ["bootstrap", "--node-id", "n"]]
)
def test_global_options_are_accepted_after_the_command(command: list[str]) -> None:
    # `serve --log-format json` was "unrecognized arguments".
    from xds_operator.cli import build_parser

    args = build_parser().parse_args([*command, "--log-format", "json", "--log-level", "warning"])
    assert (args.log_format, args.log_level) == ("json", "warning")
    args = build_parser().parse_args(["--log-format", "json", *command])
    assert (args.log_format, args.log_level) == ("json", "info")
    args = build_parser().parse_args(["--log-level", "debug", *command, "--log-level", "error"])
    assert args.log_level == "error"


def test_validate_with_a_global_option_after_it(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["validate", *map(str, SAMPLES), "--log-level", "error"], capsys)
    assert status == 0, err


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "validate", "render", "status", "bootstrap"])
def test_subcommand_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0
    assert out.startswith(f"usage: xds-operator {command}")


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["--help"], capsys)
    assert status == 0
    for command in ("serve", "validate", "render", "status", "bootstrap"):
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run([], capsys)
    assert status == 2
    assert "usage: xds-operator" in err


def test_serve_rejects_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["serve", "--dir", str(tmp_path / "absent")], capsys)
    assert status == 2
    assert "not a directory" in err


def test_serve_without_dir_and_without_kubernetes_credentials_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    status, _, err = run(["serve", "--xds-port", "0", "--admin-port", "0"], capsys)
    assert status == 1
    assert "cannot load Kubernetes credentials" in err and "--kubeconfig" in err and "--dir" in err


def test_serve_rejects_kubernetes_options_with_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["serve", "--dir", str(tmp_path), "--namespace", "media"], capsys)
    assert status == 2
    assert "--namespace" in err
    # Leader election is Kubernetes mode's too: ignoring it silently would hide a mistake.
    status, _, err = run(["serve", "--dir", str(tmp_path), "--no-leader-elect", "--lease-duration", "30"], capsys)
    assert status == 2
    assert "--no-leader-elect, --lease-duration: Kubernetes mode only" in err


def test_serve_help_explains_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["serve", "--help"], capsys)
    assert status == 0
    for option in ("--dir", "--kubeconfig", "--namespace", "node.id", "<namespace>/<pod-name>"):
        assert option in " ".join(out.split()), option


# -- status ---------------------------------------------------------------------------------


def test_status_admin_address_without_a_port_uses_the_default_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # It used to try port 80 ("connection refused", naming no port).
    status, _, err = run(["status", "--admin-address", "127.0.0.1"], capsys)
    assert "--admin-address 127.0.0.1 has no port: using 19000" in err
    assert status == 0 or "at 127.0.0.1:19000" in err


def test_status_pointed_at_the_xds_port_says_so_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        status, out, err = run(["status", "--admin-address", f"127.0.0.1:{port}"], capsys)
    finally:
        server.stop(None)
    assert status == 1 and out == ""
    assert f"127.0.0.1:{port} answered, but not as an HTTP server" in err
    assert "that is not the admin port; is it the xDS port?" in err
