"""Labels written as text follow one rule (commands/labels.py), whether they come from `--label`
(bootstrap, render) or from `bootstrap --labels-from-env`: what the proxy ends up with is the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xds_operator.cli import main
from xds_operator.commands.labels import parse_label, parse_labels


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("app=ingress", ("app", "ingress")),
        ("  app = ingress  ", ("app", "ingress")),  # whitespace around the key and the value is dropped
        ("\tapp\t=\tingress\n", ("app", "ingress")),
        ("expr=a=b", ("expr", "a=b")),  # the first = ends the key
        ("empty=", ("empty", "")),
        ("empty =  ", ("empty", "")),
        ("two words=a b", ("two words", "a b")),  # inner whitespace is kept: only a selector can say if it matches
    ],
)
def test_a_label_is_read_by_one_rule(text: str, label: tuple[str, str]) -> None:
    assert parse_label(text) == label
    assert parse_labels(f" , {text} ,", "here") == dict([label])  # the same inside a list


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("novalue", "'novalue' is not KEY=VALUE (no '=')"),
        ("  ", "'' is not KEY=VALUE (no '=')"),
        ("=value", "'=value' has an empty key"),
        ("   = value", "'= value' has an empty key"),
    ],
)
def test_a_label_that_is_not_key_value_is_refused_by_name(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_label(text)
    assert str(error.value) == problem


def test_a_hostile_list_of_labels_is_refused_or_read_without_trouble() -> None:
    many = ",".join(f"k{i}=v{i}" for i in range(20_000))
    assert len(parse_labels(many, "here")) == 20_000
    with pytest.raises(ValueError, match=r"^here: key 'k' appears twice$"):
        parse_labels("k=1," * 10_000, "here")
    with pytest.raises(ValueError, match=r"^here: '\\x00' is not KEY=VALUE"):
        parse_labels("a=b,\x00", "here")


def test_bootstrap_reads_a_flag_and_the_environment_alike(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROXY_LABELS", " zone = eu-1 , tier= edge")
    status, out, err = run(
        ["bootstrap", "--node-id", "n", "--label", " app = ingress ", "--labels-from-env", "PROXY_LABELS"], capsys
    )
    assert (status, err) == (0, "")
    assert yaml.safe_load(out)["node"]["metadata"]["labels"] == {"app": "ingress", "zone": "eu-1", "tier": "edge"}


@pytest.mark.parametrize("command", [["bootstrap", "--node-id", "n"], ["render", "."]])
def test_a_bad_label_flag_is_a_usage_error_naming_the_flag(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run([*command, "--label", " =ingress"], capsys)
    assert (status, out) == (2, "")
    assert "argument --label: '=ingress' has an empty key" in err


def test_render_selects_with_a_label_written_with_spaces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "calls.yaml").write_text(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {name: calls}\n"
        "spec:\n  selector: {app: ingress}\n  listeners:\n  - name: calls-l\n    udp:\n      port: 2000\n"
        "      cluster: {name: calls-c, endpoints: [{name: w, host: {address: 10.0.0.1}, port: 9000}]}\n"
    )
    status, out, err = run(["render", str(tmp_path), "--label", "app = ingress"], capsys)
    assert status == 0, err
    assert [listener["name"] for listener in json.loads(out)["LDS"]["resources"]] == ["calls-l"]
