"""The broker's protocol documents: the C example compiles, the JSON Schema says what the
broker says, and every error code of the broker is documented. No kernel access."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from vsnetd import broker
from vsnetd.broker import protocol

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "packaging" / "examples" / "vsnet_listen.c"
SCHEMA = ROOT / "schemas" / "broker.schema.json"
PROTOCOL = ROOT / "docs" / "broker-protocol.md"
BROKER_SOURCES = sorted((ROOT / "vsnetd" / "broker").glob("*.py"))
GCC = ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(loaded)
    return loaded


def validator(schema: dict[str, Any], definition: str | None = None) -> Draft202012Validator:
    """The whole schema, or one of its $defs (with the others still reachable)."""
    if definition is None:
        return Draft202012Validator(schema)
    return Draft202012Validator({**schema, "oneOf": [{"$ref": f"#/$defs/{definition}"}]})


def broker_codes() -> set[str]:
    codes = {code for source in BROKER_SOURCES
             for code in re.findall(r'BrokerError\(\s*"([a-z-]+)"', source.read_text())}
    assert codes, "no BrokerError codes found in vsnetd/broker/"
    return codes


# --------------------------------------------------------------------------- the C example


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_the_c_example_compiles_without_a_warning(tmp_path: Path) -> None:
    binary = tmp_path / "vsnet_listen"
    result = subprocess.run([*GCC, "-o", str(binary), str(EXAMPLE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert binary.exists()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_the_c_example_refuses_bad_arguments_without_the_broker(tmp_path: Path) -> None:
    binary = tmp_path / "vsnet_listen"
    subprocess.run([*GCC, "-o", str(binary), str(EXAMPLE)], check=True)
    usage = subprocess.run([str(binary)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    for port in ("0", "65536", "http", "80x"):
        result = subprocess.run([str(binary), "nas1", port], capture_output=True, text=True)
        assert result.returncode == 2, port
    missing = tmp_path / "no-broker.sock"
    result = subprocess.run([str(binary), "nas1", "8080", str(missing)], capture_output=True,
                            text=True, timeout=10)
    assert result.returncode == 1 and str(missing) in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- the schema

GOOD_REQUESTS: list[dict[str, Any]] = [
    {"v": 1, "op": "listen", "server": "nas1", "proto": "tcp", "port": 8080},
    {"v": 1, "op": "listen", "server": "nas1", "port": 53, "proto": "udp",
     "address": "10.0.0.5", "backlog": 1, "reuseport": True, "freebind": False},
    {"v": 1, "op": "listen", "server": "nas1", "port": 65535, "family": 6},
    {"v": 1, "op": "socket", "server": "nas1"},
    {"v": 1, "op": "socket", "server": "nas1", "proto": "udp", "family": 6},
    {"v": 1, "op": "socket", "server": "nas1", "address": "2001:db8:5::5", "port": 0},
    {"v": 1, "op": "servers"},
    {"v": 1, "op": "subscribe"},
    {"v": 1, "op": "servers", "server": "ignored", "port": "not even checked"},
    {"v": 1, "op": "batch", "requests": [{"op": "listen", "server": "nas1", "port": 2049},
                                         {"op": "listen", "server": "nas1", "port": 2049,
                                          "proto": "udp"},
                                         {"op": "socket", "server": "nas2", "family": 6}]},
    {"v": 1, "op": "batch", "requests": [{"op": "socket", "server": "nas1"}] * 253},
]

BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "unknown op": {"v": 1, "op": "bind", "server": "nas1", "port": 80},
    "unknown key": {"v": 1, "op": "listen", "server": "nas1", "port": 80, "colour": "red"},
    "unknown key on servers": {"v": 1, "op": "servers", "verbose": True},
    "missing server": {"v": 1, "op": "listen", "port": 8080},
    "missing server for socket": {"v": 1, "op": "socket", "family": 4},
    "port 0 for listen": {"v": 1, "op": "listen", "server": "nas1", "port": 0},
    "missing port for listen": {"v": 1, "op": "listen", "server": "nas1"},
    "port too high": {"v": 1, "op": "listen", "server": "nas1", "port": 65536},
    "port as a string": {"v": 1, "op": "listen", "server": "nas1", "port": "8080"},
    "port as a boolean": {"v": 1, "op": "listen", "server": "nas1", "port": True},
    "proto": {"v": 1, "op": "listen", "server": "nas1", "port": 80, "proto": "sctp"},
    "family": {"v": 1, "op": "socket", "server": "nas1", "family": 5},
    "backlog 0": {"v": 1, "op": "listen", "server": "nas1", "port": 80, "backlog": 0},
    "freebind as an integer": {"v": 1, "op": "socket", "server": "nas1", "freebind": 1},
    "address null": {"v": 1, "op": "socket", "server": "nas1", "address": None},
    "version 2": {"v": 2, "op": "servers"},
    "no version": {"op": "servers"},
    "no op": {"v": 1, "server": "nas1"},
    "empty batch": {"v": 1, "op": "batch", "requests": []},
    "batch of 254": {"v": 1, "op": "batch", "requests": [{"op": "socket", "server": "a"}] * 254},
    "batch without requests": {"v": 1, "op": "batch"},
    "batch with a server key": {"v": 1, "op": "batch", "server": "nas1",
                                "requests": [{"op": "socket", "server": "nas1"}]},
    "batch of servers": {"v": 1, "op": "batch", "requests": [{"op": "servers"}]},
    "batch item with v": {"v": 1, "op": "batch",
                          "requests": [{"v": 1, "op": "socket", "server": "nas1"}]},
    "batch item without server": {"v": 1, "op": "batch", "requests": [{"op": "socket"}]},
    "batch item with port 0": {"v": 1, "op": "batch",
                               "requests": [{"op": "listen", "server": "nas1", "port": 0}]},
    "batch item not an object": {"v": 1, "op": "batch", "requests": ["listen"]},
    "nested batch": {"v": 1, "op": "batch", "requests": [{"op": "batch", "requests": []}]},
}

META = {"server": "nas1", "address": "10.0.0.5", "port": 8080, "proto": "tcp", "family": 4,
        "mark": 90177537, "namespace": ""}
NAS1 = {"server": "nas1", "mode": "pbr", "addresses": ["10.0.0.5/24", "2001:db8:5::5/64"],
        "mark": 90177537, "namespace": "", "state": "in-sync"}
NAS2 = {"server": "nas2", "mode": "netns", "addresses": ["10.0.0.7/24"], "mark": 0,
        "namespace": "vs-nas2", "state": "pending"}

GOOD_REPLIES: list[dict[str, Any]] = [
    {"v": 1, "ok": True, "generation": 1, "sockets": [META], "part": 1, "parts": 1},
    {"v": 1, "ok": True, "generation": 7, "sockets": [META] * 253, "part": 1, "parts": 2},
    {"v": 1, "ok": True, "generation": 7,
     "sockets": [{**META, "namespace": "vs-nas2", "mark": 0, "family": 6,
                  "address": "2001:db8::7", "proto": "udp", "port": 53}],
     "part": 2, "parts": 2},
    {"v": 1, "ok": True, "generation": 0, "sockets": [], "part": 1, "parts": 1},
    {"v": 1, "ok": True, "generation": 3, "part": 1, "parts": 1,
     "sockets": [{**META, "request": 0}, {**META, "proto": "udp", "request": 1}]},
    {"v": 1, "ok": True, "generation": 1, "servers": [NAS1, NAS2]},
    {"v": 1, "ok": True, "generation": 0, "servers": []},
    {"v": 1, "ok": False, "error": {"code": "forbidden",
                                    "message": "uid 4243 may not use 'nas1'"}},
]

BAD_REPLIES: dict[str, dict[str, Any]] = {
    "no part": {"v": 1, "ok": True, "generation": 1, "sockets": [META], "parts": 1},
    "too many sockets in one part": {"v": 1, "ok": True, "generation": 1,
                                     "sockets": [META] * 254, "part": 1, "parts": 1},
    "metadata without mark": {"v": 1, "ok": True, "generation": 1, "part": 1, "parts": 1,
                              "sockets": [{k: v for k, v in META.items() if k != "mark"}]},
    "unknown error code": {"v": 1, "ok": False, "error": {"code": "oops", "message": ""}},
    "error without message": {"v": 1, "ok": False, "error": {"code": "forbidden"}},
    "ok true with an error": {"v": 1, "ok": True,
                              "error": {"code": "forbidden", "message": "no"}},
    "negative request index": {"v": 1, "ok": True, "generation": 1, "part": 1, "parts": 1,
                               "sockets": [{**META, "request": -1}]},
    "unknown state": {"v": 1, "ok": True, "generation": 1,
                      "servers": [{**NAS1, "state": "fine"}]},
}

GOOD_EVENTS: list[dict[str, Any]] = [
    {"v": 1, "event": "changed", "generation": 2, "changed": ["nas1"], "removed": [],
     "servers": [NAS1]},
    {"v": 1, "event": "changed", "generation": 3, "changed": [], "removed": ["nas1"],
     "servers": []},
]

BAD_EVENTS: dict[str, dict[str, Any]] = {
    "other event": {**GOOD_EVENTS[0], "event": "removed"},
    "no servers": {k: v for k, v in GOOD_EVENTS[0].items() if k != "servers"},
    "with ok": {**GOOD_EVENTS[0], "ok": True},
}


@pytest.mark.parametrize("request_", GOOD_REQUESTS)
def test_good_requests_are_valid_and_the_broker_takes_them(schema: dict[str, Any],
                                                          request_: dict[str, Any]) -> None:
    validator(schema, "request").validate(request_)
    validator(schema).validate(request_)
    broker.parse_request(json.dumps(request_).encode())  # no BrokerError


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_are_invalid_and_the_broker_refuses_them(schema: dict[str, Any],
                                                             name: str) -> None:
    request_ = BAD_REQUESTS[name]
    assert not validator(schema, "request").is_valid(request_), name
    assert not validator(schema).is_valid(request_), name
    with pytest.raises(broker.BrokerError):
        broker.parse_request(json.dumps(request_).encode())


@pytest.mark.parametrize("reply", GOOD_REPLIES)
def test_good_replies_are_valid(schema: dict[str, Any], reply: dict[str, Any]) -> None:
    validator(schema, "reply").validate(reply)
    validator(schema).validate(reply)


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_bad_replies_are_invalid(schema: dict[str, Any], name: str) -> None:
    assert not validator(schema, "reply").is_valid(BAD_REPLIES[name]), name


@pytest.mark.parametrize("event", GOOD_EVENTS)
def test_good_events_are_valid(schema: dict[str, Any], event: dict[str, Any]) -> None:
    validator(schema, "event").validate(event)
    validator(schema).validate(event)
    assert not validator(schema, "reply").is_valid(event)


@pytest.mark.parametrize("name", sorted(BAD_EVENTS))
def test_bad_events_are_invalid(schema: dict[str, Any], name: str) -> None:
    assert not validator(schema, "event").is_valid(BAD_EVENTS[name]), name


def test_the_broker_error_replies_match_the_schema(schema: dict[str, Any]) -> None:
    """What the broker's own code builds, not samples written by hand."""
    replies = validator(schema, "reply")
    for code in sorted(broker_codes()):
        replies.validate(broker.BrokerError(code, "a message").reply())
    refused = [b"", b"[]", b"{", json.dumps({"v": 1, "op": "frob"}).encode(),
               json.dumps({"v": 3, "op": "servers"}).encode(), b" " * (broker.MAX_MESSAGE + 1),
               *(json.dumps(r).encode() for r in BAD_REQUESTS.values())]
    for data in refused:
        with pytest.raises(broker.BrokerError) as caught:
            broker.parse_request(data)
        replies.validate(caught.value.reply())


def test_the_schema_knows_every_request_key_and_op(schema: dict[str, Any]) -> None:
    """The fields of broker.Request (plus v) are the keys the schema allows; a batch item
    has the same keys but v."""
    allowed = {"v", *broker.Request._fields}
    assert allowed == protocol.REQUEST_KEYS
    for op in ("listen", "socket", "servers", "subscribe"):
        properties = schema["$defs"][f"{op}_request"]["properties"]
        assert set(properties) == allowed, op
        assert properties["op"] == {"const": op}
    for op in protocol.SOCKET_OPS:
        item = schema["$defs"][f"{op}_item"]
        assert set(item["properties"]) == allowed - {"v"} == protocol.ITEM_KEYS, op
        assert item["required"] == [k for k in schema["$defs"][f"{op}_request"]["required"]
                                    if k != "v"]
    batch = schema["$defs"]["batch_request"]
    assert set(batch["properties"]) == protocol.BATCH_KEYS
    assert batch["properties"]["requests"]["maxItems"] == broker.MAX_FDS
    assert [one["$ref"] for one in schema["$defs"]["request"]["oneOf"]] == [
        f"#/$defs/{op}_request" for op in broker.OPS]


def test_the_schema_limits_match_the_broker(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    assert defs["version"]["const"] == broker.VERSION
    assert defs["sockets_reply"]["properties"]["sockets"]["maxItems"] == broker.MAX_FDS
    listen = defs["listen_request"]["properties"]
    defaults = broker.Request("listen")
    assert listen["backlog"]["default"] == defaults.backlog
    assert listen["reuseport"]["default"] == defaults.reuseport
    assert listen["freebind"]["default"] == defaults.freebind
    assert defs["proto"]["default"] == defaults.proto
    assert str(broker.MAX_MESSAGE) in schema["description"]


# --------------------------------------------------------------------------- error codes


def test_every_broker_error_code_is_documented_and_in_the_schema(schema: dict[str, Any]) -> None:
    codes = broker_codes()
    expected = {"bad-request", "too-large", "unsupported-version", "unknown-op",
                "unknown-server", "forbidden", "socket-error"}
    assert codes == expected == set(protocol.ERROR_CODES)  # a new code: document it, then here
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", PROTOCOL.read_text(), re.MULTILINE))
    assert codes <= documented, codes - documented
    assert set(schema["$defs"]["error_code"]["enum"]) == codes


def test_the_protocol_document_states_the_broker_constants() -> None:
    text = PROTOCOL.read_text()
    assert "/run/vsnet/broker.sock" in text
    assert "SOCK_SEQPACKET" in text and "0660" in text and f"`{broker.BROKER_GROUP}`" in text
    assert f"{broker.MAX_MESSAGE:,}" in text and str(broker.MAX_FDS) in text
    for op in broker.OPS:
        assert f"### `{op}`" in text, op
    for key in ("part", "parts", "generation", "changed", "removed", "allow_users",
                "allow_groups", "privileged_ports", "SO_PEERCRED", "IP_FREEBIND",
                "IPV6_FREEBIND", "IPV6_V6ONLY", "SO_MARK", "SCM_RIGHTS"):
        assert key in text, key


# --------------------------------------------------------------------------- the client


def test_the_client_library_imports_nothing_heavy() -> None:
    """An application that imports vsnetd.client gets the protocol module and the standard
    library: no pydantic, no YAML, no netlink (the import time is bench/broker.py's)."""
    code = ("import sys, vsnetd.client\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'pydantic_core', 'yaml', 'pyroute2', 'vsnetd', 'watchfiles'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["vsnetd", "vsnetd.broker", "vsnetd.broker.protocol",
                                     "vsnetd.client"]


def test_the_c_example_and_the_client_name_only_the_protocol() -> None:
    """Both clients depend on the protocol alone: the C example cites the protocol module,
    the Python client imports nothing else of vsnet."""
    imports = re.findall(r"^from (vsnetd\S*) import|^import (vsnetd\S*)",
                         (ROOT / "vsnetd" / "client.py").read_text(), re.MULTILINE)
    assert {a or b for a, b in imports} == {"vsnetd.broker.protocol"}
    example = EXAMPLE.read_text()
    assert "vsnetd/broker/protocol.py" in example and "vsnetd/broker.py" not in example
