"""Bad VirtualService files, each with the error it must get: shared by the directory-mode tests."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from xds_operator.sources.loader import MAX_DOCUMENTS, MAX_FILE_BYTES


def vs_yaml(name: str, *, port: int = 2000, listeners: str | None = None, namespace: str = "default") -> str:
    """One VirtualService document; `listeners` replaces the listener list (YAML flow style)."""
    listeners = listeners or (
        f"[{{name: {name}-l, udp: {{port: {port}, cluster: {{name: {name}-c, "
        "endpoints: [{name: w, host: {address: 127.0.0.1}, port: 9000}]}}}]"
    )
    return textwrap.dedent(
        f"""\
        apiVersion: servicemesh.l7mp.io/v1
        kind: VirtualService
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          selector: {{app: envoy-ingress}}
          listeners: {listeners}
        """
    )


def listener(index: int, *, name: str | None = None, port: int | None = None, endpoints: str = "") -> str:
    endpoints = endpoints or "[{name: w, host: {address: 10.0.0.1}, port: 1}]"
    return (
        f"{{name: {name or f'l{index}'}, udp: {{port: {port or 1 + index % 65535}, "
        f"cluster: {{name: c{index}, endpoints: {endpoints}}}}}}}"
    )


def many_listeners(count: int) -> list[dict]:
    """Valid, distinct listeners (names, ports and clusters all different)."""
    return [
        {
            "name": f"l{index}",
            "udp": {
                "port": 1 + index % 65535,
                "cluster": {
                    "name": f"c{index}",
                    "endpoints": [{"name": "w", "host": {"address": "10.0.0.1"}, "port": 1}],
                },
            },
        }
        for index in range(count)
    ]


def aliased_listeners(count: int) -> str:
    """One listener and count - 1 YAML aliases of it: 10,000 items in 40 kB that parse in milliseconds."""
    return "[" + ", ".join([f"&l {listener(0)}", *(["*l"] * (count - 1))]) + "]"


@dataclass(frozen=True)
class BadFile:
    name: str
    content: bytes
    error: str  # a part of the one error it gets (after "<path>: ")


TEN_MB = 10 * 1024 * 1024
BAD_FILES = [
    BadFile("malformed.yaml", b"spec: [unclosed\n  selector: {a: b}\n", "invalid YAML: line 2, column 11"),
    BadFile("latin1.yaml", vs_yaml("latin").replace("name: w", "name: w\xe9").encode("latin-1"), "not UTF-8 text"),
    BadFile("a-list.yaml", b"- 1\n- 2\n", "document 1: (document): expected a mapping, got a list"),
    BadFile(
        "bad-date.yaml",
        vs_yaml("dated").replace("namespace: default}", "namespace: default, creationTimestamp: 2024-13-45}").encode(),
        "document 1: invalid YAML value: month must be in 1..12",
    ),
    BadFile(
        "huge-int.yaml",
        vs_yaml("huge").replace("port: 2000", "port: " + "9" * 5000).encode(),
        "invalid YAML value: Exceeds the limit (4300 digits)",
    ),
    BadFile("too-deep.yaml", b"a: " + b"[" * 2000 + b"]" * 2000, "exceeded maximum nesting depth"),
    BadFile(
        "ten-mb.yaml",
        (vs_yaml("big") + "# " + "x" * TEN_MB + "\n").encode(),
        f"file is larger than the limit of {MAX_FILE_BYTES} bytes; skipped",
    ),
    BadFile(
        "many-documents.yaml",
        b"---\nkind: Other\n" * (MAX_DOCUMENTS + 1),
        f"more than {MAX_DOCUMENTS} YAML documents, the limit per file",
    ),
    BadFile(
        "ten-thousand-listeners.yaml",
        vs_yaml("wide", listeners=aliased_listeners(10_000)).encode(),
        "document 1 (default/wide): spec.listeners: must have at most 64 items, got 10000",
    ),
    BadFile(
        "envoy-name.yaml",
        vs_yaml("colon", listeners="[" + listener(0, name='"xdstp://a/b"') + "]").encode(),
        "document 1 (default/colon): spec.listeners[0].name: 'xdstp://a/b' must match",
    ),
    BadFile(
        "same-port.yaml",
        vs_yaml("twice", listeners=f"[{listener(0, port=2000)}, {listener(1, port=2000)}]").encode(),
        "document 1 (default/twice): spec.listeners[1].udp.port: duplicate port 2000 (also in spec.listeners[0])",
    ),
]
