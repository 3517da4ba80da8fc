"""The `xds-operator` command line: serve, validate, bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from . import __version__
from .shutdown import EXIT_DEADLINE_SECONDS, GRACE_SECONDS


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xds-operator",
        description="An Envoy xDS control plane for UDP VirtualServices (servicemesh.l7mp.io/v1).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        "--xds-address", default="0.0.0.0", metavar="HOST", help="address the xDS gRPC server binds (default: 0.0.0.0)"
    )
    serve.add_argument("--xds-port", type=int, default=18000, metavar="PORT", help="xDS gRPC port (default: 18000)")
    serve.add_argument(
        "--admin-address", default="127.0.0.1", metavar="HOST", help="address of the admin port (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--admin-port",
        type=int,
        default=19000,
        metavar="PORT",
        help="admin HTTP port: /healthz, /readyz, /debug/proxies (default: 19000)",
    )

    validate = commands.add_parser(
        "validate",
        help="check VirtualService files without serving them",
        description="Validate VirtualService files (a directory means its *.yaml and *.yml files); print every "
        "problem with its file and field path. Exit status 1 if any document is invalid.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE_OR_DIR")

    bootstrap = commands.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap pointing at this control plane",
        description="Print an Envoy bootstrap (YAML) whose ADS server is this control plane. "
        "The labels become node.metadata.labels, which decide the VirtualServices the proxy receives.",
    )
    bootstrap.add_argument("--node-id", required=True, help="the proxy's node id (unique per Envoy)")
    bootstrap.add_argument(
        "--label", type=_label, action="append", default=[], metavar="KEY=VALUE", help="a proxy label; repeatable"
    )
    bootstrap.add_argument(
        "--xds-address",
        default="127.0.0.1:18000",
        metavar="HOST:PORT",
        help="the control plane's xDS address (default: 127.0.0.1:18000)",
    )
    bootstrap.add_argument(
        "--admin-address",
        default="127.0.0.1:9901",
        metavar="HOST:PORT",
        help="Envoy's own admin address (default: 127.0.0.1:9901)",
    )
    bootstrap.add_argument("--cluster", default="xds-operator", help="node.cluster (default: xds-operator)")
    bootstrap.add_argument(
        "--delta",
        action="store_true",
        help="use incremental xDS (DELTA_GRPC): only changed resources go on the wire (default: state of the world)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch of changes at info
    return {"serve": _serve, "validate": _validate, "bootstrap": _bootstrap}[args.command](args)


def _serve(args: argparse.Namespace) -> int:
    from .app import serve_directory, serve_kubernetes
    from .operator.kube import NoKubernetesConfig

    xds_address = f"{args.xds_address}:{args.xds_port}"
    if args.dir is not None:
        if args.kubeconfig is not None or args.namespace:
            print("xds-operator: --kubeconfig and --namespace apply without --dir only", file=sys.stderr)
            return 2
        if not args.dir.is_dir():
            print(f"xds-operator: --dir {args.dir}: not a directory", file=sys.stderr)
            return 2
        serving = serve_directory(args.dir, xds_address, args.admin_address, args.admin_port)
    else:
        serving = serve_kubernetes(args.kubeconfig, args.namespace, xds_address, args.admin_address, args.admin_port)
    try:
        asyncio.run(serving)
    except (OSError, NoKubernetesConfig) as error:
        print(f"xds-operator: {error}", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .files import SUFFIXES, read_file

    paths: list[Path] = []
    for path in args.files:
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file()))
        else:
            paths.append(path)
    failed = False
    for path in paths:
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            failed = True
            continue
        contents = read_file(path)
        for problem in contents.errors:
            print(problem, file=sys.stderr)
        failed = failed or bool(contents.errors)
        print(f"{path}: {len(contents.services)} valid VirtualService(s), {len(contents.errors)} problem(s)")
    return 1 if failed else 0


def _bootstrap(args: argparse.Namespace) -> int:
    from .bootstrap import envoy_bootstrap, render

    try:
        config = envoy_bootstrap(
            args.node_id,
            dict(args.label),
            args.xds_address,
            cluster=args.cluster,
            admin_address=args.admin_address,
            delta=args.delta,
        )
    except ValueError as error:
        print(f"xds-operator bootstrap: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
