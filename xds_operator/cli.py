"""The `xds-operator` command line: serve, validate, render, bootstrap, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xds_operator import __version__
from xds_operator.app.shutdown import EXIT_DEADLINE_SECONDS, GRACE_SECONDS
from xds_operator.commands.bootstrap import DEFAULT_KEEPALIVE_SECONDS, KEEPALIVE_TIMEOUT_SECONDS, MIN_KEEPALIVE_SECONDS
from xds_operator.commands.labels import parse_label
from xds_operator.net import join_host_port, parse_address, parse_port
from xds_operator.xds.transport import (
    DEFAULT_POLICY,
    MIN_CLIENT_PING_INTERVAL_SECONDS,
    SERVER_PING_TIMEOUT_SECONDS,
    ConnectionPolicy,
    ServerTls,
    TlsFileError,
    load_server_tls,
)

DEFAULT_XDS_PORT = 18000
DEFAULT_ADMIN_PORT = 19000  # the control plane's admin port (serve, status)
DEFAULT_ENVOY_ADMIN_PORT = 9901  # Envoy's own (bootstrap)

if TYPE_CHECKING:  # the kubernetes client loads only in Kubernetes mode
    from xds_operator.ports.assigner import PortRange
    from xds_operator.sources.kubernetes.leader import LeaseConfig


def _label(text: str) -> tuple[str, str]:
    try:
        return parse_label(text)
    except ValueError as error:  # argparse names the flag: "argument --label: 'x' is not KEY=VALUE (no '=')"
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of seconds, 0 or more")
    return value


def _port(text: str) -> int:
    try:
        return parse_port(text, allow_zero=True)
    except ValueError as error:  # argparse names the flag
        raise argparse.ArgumentTypeError(str(error)) from None


def _port_range(text: str) -> PortRange:
    from xds_operator.ports.assigner import parse_port_range

    try:
        return parse_port_range(text)
    except ValueError as error:  # argparse names the flag
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xds-operator",
        description="An Envoy xDS control plane for UDP and TCP VirtualServices (servicemesh.l7mp.io/v1).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_serve, _add_validate, _add_render, _add_status, _add_bootstrap):
        add(commands)
    for command in commands.choices.values():
        # Also after the command (`serve --log-format json`): given there, they win; absent, the ones before stay.
        _add_global_options(command.add_argument_group("global options (also before the command)"), defaults=False)
    return parser


def _add_global_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, defaults: bool) -> None:
    parser.add_argument(
        "--log-level",
        default="info" if defaults else argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="default: info (logs every push, per proxy and type; debug adds every ACK)",
    )
    parser.add_argument(
        "--log-format",
        default="text" if defaults else argparse.SUPPRESS,
        choices=["text", "json"],
        help="text (default), or one JSON object per line: time, level, logger, message and the event's "
        "fields (node_id, type, version, group, file, error...)",
    )


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`serve`: the control plane (directory or Kubernetes mode)."""
    serve = commands.add_parser(
        "serve",
        help="serve VirtualServices to Envoy over ADS",
        description="Serve VirtualServices to Envoy proxies over aggregated xDS (ADS). "
        "With --dir, from the VirtualService files in a directory, watched live; a proxy receives the "
        "VirtualServices whose spec.selector is contained in its bootstrap's node.metadata.labels. "
        "Without --dir, as a Kubernetes operator: it watches VirtualServices and Pods (in-cluster config, "
        "or --kubeconfig / $KUBECONFIG outside a cluster), identifies each proxy by its node.id (pod UID or "
        "<namespace>/<pod-name>), takes its labels from that Pod, and writes each VirtualService's status. "
        f"On SIGTERM or SIGINT it ends every ADS stream (proxies reconnect, to another replica if there is one, "
        f"and keep forwarding meanwhile), gives stuck streams {GRACE_SECONDS:.0f}s and exits within "
        f"{EXIT_DEADLINE_SECONDS:.0f}s; a second signal exits at once.",
    )
    serve.add_argument(
        "--dir", type=Path, metavar="DIR", help="serve the *.yaml / *.yml VirtualService files in DIR (no cluster)"
    )
    serve.add_argument(
        "--kubeconfig", type=Path, metavar="FILE", help="Kubernetes mode: kubeconfig to use outside a cluster"
    )
    serve.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="Kubernetes mode: watch VirtualServices and Pods only in NS (repeatable; default: all namespaces)",
    )
    serve.add_argument(
        "--xds-address",
        default="0.0.0.0",
        metavar="HOST[:PORT]",
        help="address the xDS gRPC server binds (default: 0.0.0.0); a port here is the same as --xds-port",
    )
    serve.add_argument("--xds-port", type=_port, metavar="PORT", help=f"xDS gRPC port (default: {DEFAULT_XDS_PORT})")
    serve.add_argument(
        "--admin-address",
        default="127.0.0.1",
        metavar="HOST[:PORT]",
        help="address of the admin port (default: 127.0.0.1); a port here is the same as --admin-port",
    )
    serve.add_argument(
        "--admin-port",
        type=_port,
        metavar="PORT",
        help="admin HTTP port: /healthz, /readyz, /metrics (Prometheus), /debug/proxies, "
        f"/debug/config_dump?node=ID (default: {DEFAULT_ADMIN_PORT})",
    )
    serve.add_argument(
        "--listener-ports",
        type=_port_range,
        metavar="FIRST-LAST",
        help="assign listeners that name no port one of these (per protocol), reported in status.listeners[].port "
        "and kept while the VirtualService exists (default: none; such a listener is invalid)",
    )
    serve.add_argument(
        "--listener-port-state",
        type=Path,
        metavar="FILE",
        help="directory mode: where the assigned ports are recorded across restarts (default: beside DIR, "
        ".DIRNAME.listener-ports.json in its parent)",
    )
    _add_serve_transport_arguments(serve)
    _add_leader_election_arguments(serve)
    serve.set_defaults(run=_serve)


def _add_serve_transport_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "transport security and connections",
        "xDS is plaintext unless --tls-cert and --tls-key are given; --client-ca then also requires client "
        "certificates (mTLS). The admin port stays plain HTTP.",
    )
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve xDS over TLS with this PEM certificate chain"
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="the PEM private key of --tls-cert (unencrypted)")
    group.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="mTLS: accept only clients whose certificate this PEM CA bundle signed (needs --tls-cert)",
    )
    group.add_argument(
        "--keepalive",
        type=_seconds,
        default=DEFAULT_POLICY.keepalive,
        metavar="SECONDS",
        help="ping each connection after this long without traffic; close it if no answer within "
        f"{SERVER_PING_TIMEOUT_SECONDS:g}s (default: {DEFAULT_POLICY.keepalive:g}; 0: off). Client pings are "
        f"allowed every {MIN_CLIENT_PING_INTERVAL_SECONDS:g}s",
    )
    group.add_argument(
        "--max-connection-age",
        type=_seconds,
        default=DEFAULT_POLICY.max_connection_age,
        metavar="SECONDS",
        help="close each connection after this long (±10%% jitter), so proxies spread over new replicas; "
        f"they reconnect and are re-sent nothing they hold (default: {DEFAULT_POLICY.max_connection_age:g}; 0: never)",
    )
    group.add_argument(
        "--max-connection-age-grace",
        type=_seconds,
        default=DEFAULT_POLICY.max_connection_age_grace,
        metavar="SECONDS",
        help="after GOAWAY at the maximum age, how long the open stream may go on before the connection is "
        f"closed (default: {DEFAULT_POLICY.max_connection_age_grace:g})",
    )


def _add_leader_election_arguments(serve: argparse.ArgumentParser) -> None:
    election = serve.add_argument_group(
        "leader election (Kubernetes mode)",
        "Every replica serves xDS; only the holder of a coordination.k8s.io Lease writes VirtualService "
        "status and Events. Durations are in seconds; the defaults are client-go's.",
    )
    election.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="elect one status writer through a Lease (default: on; --no-leader-elect: this replica always writes)",
    )
    election.add_argument("--lease-name", default="xds-operator", metavar="NAME", help="default: xds-operator")
    election.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="default: $POD_NAMESPACE, else the in-cluster service account's namespace, else default",
    )
    election.add_argument(
        "--identity", metavar="ID", help="this replica's name in the Lease (default: $POD_NAME, else hostname_random)"
    )
    election.add_argument(
        "--lease-duration", type=_seconds, default=15.0, metavar="S", help="a claim without renewal lasts (default: 15)"
    )
    election.add_argument(
        "--renew-deadline",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="the leader stops writing when it could not renew for this long (default: 10)",
    )
    election.add_argument(
        "--retry-period", type=_seconds, default=2.0, metavar="S", help="renew / try to acquire every (default: 2)"
    )


def _add_validate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`validate`: check VirtualService files."""
    validate = commands.add_parser(
        "validate",
        help="check VirtualService files without serving them",
        description="Validate VirtualService files (a directory means its *.yaml and *.yml files); print every "
        "problem with its file and field path. Exit status 1 if any document is invalid, a file is empty, "
        "no file holds a VirtualService, or two VirtualServices claim the same listener name, cluster name or "
        "port on a proxy (serve would leave the younger one out).",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_DIR")
    _add_assumed_listener_ports(validate)
    validate.set_defaults(run=_validate)


def _add_assumed_listener_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listener-ports",
        type=_port_range,
        metavar="FIRST-LAST",
        help="listeners that name no port get one from this range, as serve --listener-ports would give them "
        "starting with these files (default: 20000-29999)",
    )


def _add_render(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`render`: the Envoy resources files give a proxy, without a server."""
    render = commands.add_parser(
        "render",
        help="print the Envoy resources VirtualService files give a proxy, without a server",
        description="Print the Envoy resources (clusters, endpoints, listeners; protobuf's JSON mapping, as "
        "/debug/config_dump shows them) that a proxy with the given labels would receive from these "
        "VirtualService files (a directory means its *.yaml and *.yml files): review a change before applying "
        "it. Pod selectors resolve to no endpoints here. Invalid documents are reported as by `validate` "
        "(exit status 1); conflicts are logged as warnings.",
    )
    render.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_DIR")
    render.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the proxy; repeatable (a VirtualService applies if its selector is contained in them). "
        "Whitespace around the key and the value is dropped; the value may be empty (k=)",
    )
    render.add_argument("--output", "-o", choices=["json", "yaml"], default="json", help="default: json")
    _add_assumed_listener_ports(render)
    render.set_defaults(run=_render)


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`status`: the proxies of a running control plane."""
    status = commands.add_parser(
        "status",
        help="show every connected proxy and whether it runs what it was sent",
        description="One line per proxy connected to a running control plane: node id, group (its labels), ADS "
        "variant, and per type (CDS, EDS, LDS) the version sent and whether the proxy ACKED it, NACKED it "
        "(Envoy's error follows the table) or has not answered yet (PENDING). Reads the admin port's "
        "/debug/proxies.",
    )
    status.add_argument(
        "--admin-address",
        default=f"127.0.0.1:{DEFAULT_ADMIN_PORT}",
        metavar="HOST[:PORT]",
        help=f"the control plane's admin port (default: 127.0.0.1:{DEFAULT_ADMIN_PORT}; without a port, "
        f"{DEFAULT_ADMIN_PORT})",
    )
    status.add_argument("--output", "-o", choices=["text", "json"], default="text", help="default: text")
    status.set_defaults(run=_status)


def _add_bootstrap(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bootstrap`: an Envoy bootstrap pointing at the control plane."""
    bootstrap = commands.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap pointing at this control plane",
        description="Print an Envoy bootstrap (YAML) whose ADS server is this control plane. "
        "The labels become node.metadata.labels, which decide the VirtualServices the proxy receives.",
    )
    bootstrap.add_argument("--node-id", required=True, help="the proxy's node id (unique per Envoy)")
    bootstrap.add_argument(
        "--label",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a proxy label; repeatable. Whitespace around the key and the value is dropped; the value may be "
        "empty (k=)",
    )
    bootstrap.add_argument(
        "--labels-from-env",
        metavar="VAR",
        help="also take proxy labels from environment variable VAR, written k1=v1,k2=v2: each item as --label "
        "reads it, empty items skipped, no key twice; on the same key an explicit --label wins",
    )
    bootstrap.add_argument(
        "--xds-address",
        default=f"127.0.0.1:{DEFAULT_XDS_PORT}",
        metavar="HOST[:PORT]",
        help=f"the control plane's xDS address (default: 127.0.0.1:{DEFAULT_XDS_PORT}; without a port, "
        f"{DEFAULT_XDS_PORT})",
    )
    bootstrap.add_argument(
        "--admin-address",
        default=f"127.0.0.1:{DEFAULT_ENVOY_ADMIN_PORT}",
        metavar="HOST[:PORT]",
        help=f"Envoy's own admin address (default: 127.0.0.1:{DEFAULT_ENVOY_ADMIN_PORT}; without a port, "
        f"{DEFAULT_ENVOY_ADMIN_PORT})",
    )
    bootstrap.add_argument("--cluster", default="xds-operator", help="node.cluster (default: xds-operator)")
    variant = bootstrap.add_mutually_exclusive_group()
    variant.add_argument(
        "--delta",
        dest="delta",
        action="store_true",
        default=True,
        help="incremental xDS (DELTA_GRPC), the default: a change sends only the resources that changed",
    )
    variant.add_argument(
        "--sotw",
        dest="delta",
        action="store_false",
        help="state-of-the-world xDS (GRPC): every change sends all resources of its type",
    )
    bootstrap.add_argument(
        "--no-health-reports",
        dest="health_reports",
        action="store_false",
        help="leave out hds_config: the proxy does not run its clusters' health checks a second time to report "
        "endpoint health to the control plane (which then does not know it)",
    )
    _add_bootstrap_transport_arguments(bootstrap)
    bootstrap.set_defaults(run=_bootstrap)


def _add_bootstrap_transport_arguments(bootstrap: argparse.ArgumentParser) -> None:
    group = bootstrap.add_argument_group(
        "transport security and keepalive",
        "With --tls-ca the proxy connects over TLS and verifies the control plane's certificate: signed by "
        "that CA, with --tls-server-name as a SAN. Paths are as Envoy sees them.",
    )
    group.add_argument("--tls-ca", metavar="FILE", help="connect over TLS, trusting this PEM CA for the server")
    group.add_argument("--tls-cert", metavar="FILE", help="mTLS: the proxy's PEM client certificate (with --tls-key)")
    group.add_argument("--tls-key", metavar="FILE", help="mTLS: the private key of --tls-cert")
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the DNS name or IP address the server's certificate must carry as a SAN; sent as SNI when a "
        "name (default: the host of --xds-address)",
    )
    group.add_argument(
        "--keepalive",
        type=_seconds,
        default=DEFAULT_KEEPALIVE_SECONDS,
        metavar="SECONDS",
        help=f"HTTP/2 PING interval on the xDS connection (default: {DEFAULT_KEEPALIVE_SECONDS:g}; 0: off; "
        f"at least {MIN_KEEPALIVE_SECONDS:g}); no answer within min(interval, {KEEPALIVE_TIMEOUT_SECONDS:g}s) "
        "closes it and Envoy reconnects",
    )


def main(argv: list[str] | None = None) -> int:
    from xds_operator.admin.logs import configure

    args = build_parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    status: int = args.run(args)
    return status


def _serve(args: argparse.Namespace) -> int:
    from xds_operator.admin.logs import native_log_lines
    from xds_operator.app.control_plane import serve_directory, serve_kubernetes
    from xds_operator.sources.kubernetes.client import NoKubernetesConfig

    try:
        xds_host, xds_port = _host_and_port(args.xds_address, args.xds_port, "--xds", DEFAULT_XDS_PORT)
        admin_host, admin_port = _host_and_port(args.admin_address, args.admin_port, "--admin", DEFAULT_ADMIN_PORT)
    except ValueError as error:
        print(f"xds-operator serve: {error}", file=sys.stderr)
        return 2
    xds_address = join_host_port(xds_host, xds_port)
    transport = _serve_transport(args)
    if isinstance(transport, int):
        return transport
    tls, policy = transport
    if args.dir is not None:
        if given := _kubernetes_only_options_given(args):
            print(f"xds-operator: {', '.join(given)}: Kubernetes mode only (without --dir)", file=sys.stderr)
            return 2
        if not args.dir.is_dir():
            print(f"xds-operator: --dir {args.dir}: not a directory", file=sys.stderr)
            return 2
        from xds_operator.ports.state import default_state_path

        state = args.listener_port_state
        if state is None and args.listener_ports is not None:
            state = default_state_path(args.dir)
        if state is not None and _inside(state, args.dir):
            print(f"xds-operator: --listener-port-state {state}: must not be inside --dir {args.dir}", file=sys.stderr)
            return 2
        serving = serve_directory(
            args.dir,
            xds_address,
            admin_host,
            admin_port,
            tls=tls,
            policy=policy,
            listener_ports=args.listener_ports,
            port_state=state,
        )
    else:
        if args.listener_port_state is not None:
            print(
                "xds-operator: --listener-port-state: directory mode only (Kubernetes mode records assigned ports "
                "in each VirtualService's status)",
                file=sys.stderr,
            )
            return 2
        election = _lease_config(args)
        if election is not None and (problems := election.problems()):
            print("xds-operator: " + "; ".join(problems), file=sys.stderr)
            return 2
        serving = serve_kubernetes(
            args.kubeconfig,
            args.namespace,
            xds_address,
            admin_host,
            admin_port,
            tls=tls,
            policy=policy,
            election=election,
            listener_ports=args.listener_ports,
        )
    try:
        with native_log_lines():  # gRPC's own lines (TLS handshake failures) as log records
            asyncio.run(serving)
    except (OSError, NoKubernetesConfig) as error:
        print(f"xds-operator: {error}", file=sys.stderr)
        return 1
    return 0


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path` is in `directory` (the watch would read it, or a ConfigMap swap remove it)."""
    return os.path.abspath(path).startswith(os.path.join(os.path.abspath(directory), ""))


def _host_and_port(address: str, port: int | None, flags: str, default_port: int) -> tuple[str, int]:
    """serve's --xds-address/--xds-port (flags "--xds") or --admin-address/--admin-port ("--admin"): the host,
    and the port from either flag or the default; a port given both ways must agree (ValueError otherwise)."""
    host, port_in_address = parse_address(address, flag=f"{flags}-address", allow_port_zero=True)
    if port_in_address is not None and port is not None and port_in_address != port:
        raise ValueError(
            f"{flags}-address {address} names port {port_in_address} but {flags}-port says {port}: give the port once"
        )
    return host, port_in_address if port_in_address is not None else port if port is not None else default_port


def _lease_config(args: argparse.Namespace) -> LeaseConfig | None:
    from xds_operator.sources.kubernetes.leader import LeaseConfig, default_identity, default_namespace

    if not args.leader_elect:
        return None
    return LeaseConfig(
        name=args.lease_name,
        namespace=args.lease_namespace or default_namespace(),
        identity=args.identity or default_identity(),
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )


# serve's options that only Kubernetes mode reads (dest → flag): refused with --dir rather than ignored.
KUBERNETES_ONLY = {
    "kubeconfig": "--kubeconfig",
    "namespace": "--namespace",
    "leader_elect": "--no-leader-elect",
    "lease_name": "--lease-name",
    "lease_namespace": "--lease-namespace",
    "identity": "--identity",
    "lease_duration": "--lease-duration",
    "renew_deadline": "--renew-deadline",
    "retry_period": "--retry-period",
}


def _kubernetes_only_options_given(args: argparse.Namespace) -> list[str]:
    defaults = vars(build_parser().parse_args(["serve"]))
    return [flag for dest, flag in KUBERNETES_ONLY.items() if getattr(args, dest) != defaults[dest]]


def _serve_transport(args: argparse.Namespace) -> tuple[ServerTls | None, ConnectionPolicy] | int:
    """The TLS files (checked now) and connection policy; or the exit status after a printed error."""
    policy = ConnectionPolicy(args.keepalive, args.max_connection_age, args.max_connection_age_grace)
    if args.tls_cert is None and args.tls_key is None:
        if args.client_ca is not None:
            print(
                "xds-operator: --client-ca needs --tls-cert and --tls-key (mTLS is TLS with client certificates)",
                file=sys.stderr,
            )
            return 2
        return None, policy
    if args.tls_cert is None or args.tls_key is None:
        print("xds-operator: --tls-cert and --tls-key go together: give both", file=sys.stderr)
        return 2
    try:
        return load_server_tls(args.tls_cert, args.tls_key, args.client_ca), policy
    except TlsFileError as error:
        print(f"xds-operator: {error}", file=sys.stderr)
        return 1


def _validate(args: argparse.Namespace) -> int:
    from xds_operator.commands.render import conflicts
    from xds_operator.sources.loader import load

    loaded = load(args.files)
    problems = list(loaded.errors)
    summaries = []
    for path, contents in loaded.files:
        count = len(contents.errors)
        summary = f"{path}: {len(contents.services)} valid VirtualService(s)"
        if contents.other_kinds:  # a kustomization.yaml beside the VirtualServices is fine
            summary += f", {contents.other_kinds} document(s) of other kinds skipped"
        elif not contents.services and not contents.errors:
            problems.append(f"{path}: no VirtualService in it: the file is empty")
            count += 1
        summaries.append(f"{summary}, {count} problem(s)")
    from xds_operator.commands.render import ASSUMED_LISTENER_PORTS, place

    ports = args.listener_ports or ASSUMED_LISTENER_PORTS
    problems += place(loaded, ports).waiting
    problems += conflicts(loaded, ports)
    if not loaded.services and not problems:
        problems.append("xds-operator validate: no VirtualService found in " + " ".join(map(str, args.files)))
    for problem in problems:
        print(problem, file=sys.stderr)
    for summary in summaries:
        print(summary)
    return 1 if problems else 0


def _render(args: argparse.Namespace) -> int:
    from xds_operator.commands.render import ASSUMED_LISTENER_PORTS, render

    rendered = render(args.files, dict(args.label), args.listener_ports or ASSUMED_LISTENER_PORTS)
    for note in rendered.notes:
        print(note, file=sys.stderr)
    for problem in rendered.errors:
        print(problem, file=sys.stderr)
    if rendered.errors:
        print(f"xds-operator render: {len(rendered.errors)} problem(s); nothing rendered", file=sys.stderr)
        return 1
    if not rendered.selected:
        labels = ",".join(f"{key}={value}" for key, value in args.label) or "no labels"
        selectors = "; ".join(rendered.selectors) or "none: the files hold no VirtualService"
        print(
            f"xds-operator render: no VirtualService selects a proxy with {labels}, so it gets nothing; give its "
            f"labels with --label KEY=VALUE. The selectors in these files: {selectors}",
            file=sys.stderr,
        )
    if args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(rendered.resources, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(rendered.resources, indent=2) + "\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    from xds_operator.commands.status import Unreachable, fetch, table

    try:
        host, port = parse_address(args.admin_address, flag="--admin-address")
    except ValueError as error:
        print(f"xds-operator status: {error}", file=sys.stderr)
        return 2
    if port is None:
        port = DEFAULT_ADMIN_PORT
        print(f"xds-operator status: --admin-address {args.admin_address} has no port: using {port}", file=sys.stderr)
    try:
        proxies = fetch(join_host_port(host, port))
    except Unreachable as error:
        print(f"xds-operator status: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(proxies, indent=2) + "\n" if args.output == "json" else table(proxies))
    return 0


def _bootstrap(args: argparse.Namespace) -> int:
    import os

    from xds_operator.commands.bootstrap import ClientTls, envoy_bootstrap, render
    from xds_operator.commands.labels import labels_from_env

    if args.tls_ca is None and (args.tls_cert or args.tls_key or args.tls_server_name):
        print(
            "xds-operator bootstrap: --tls-cert, --tls-key and --tls-server-name need --tls-ca: "
            "Envoy must verify the control plane's certificate",
            file=sys.stderr,
        )
        return 2
    try:
        tls = None if args.tls_ca is None else ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        labels = labels_from_env(args.labels_from_env, os.environ) if args.labels_from_env is not None else {}
        labels.update(args.label)  # explicit --label wins
        xds_host, xds_port = parse_address(args.xds_address, flag="--xds-address")
        admin_host, admin_port = parse_address(args.admin_address, flag="--admin-address", allow_port_zero=True)
        config = envoy_bootstrap(
            args.node_id,
            labels,
            join_host_port(xds_host, DEFAULT_XDS_PORT if xds_port is None else xds_port),
            cluster=args.cluster,
            admin_address=join_host_port(admin_host, DEFAULT_ENVOY_ADMIN_PORT if admin_port is None else admin_port),
            delta=args.delta,
            tls=tls,
            keepalive=args.keepalive,
            health_reports=args.health_reports,
        )
    except ValueError as error:
        print(f"xds-operator bootstrap: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
