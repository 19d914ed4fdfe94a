"""The daemon's incremental config loader reads exactly what a full load reads."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_pipeline_properties import server_specs
from vsnetd.config import ConfigError, ConfigLoader, parse_config, split_servers


def render(servers: dict[str, dict[str, Any]], header: str = "version: 1\n") -> str:
    body = yaml.safe_dump({"servers": servers}, sort_keys=False, default_flow_style=False)
    return header + "# the virtual servers\n" + body


def outcome(load: Any) -> Any:
    try:
        return load()
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]


edits = st.sampled_from(["address", "id", "remove", "add", "break", "duplicate-id"])


@given(ids=st.lists(st.integers(1, 200), min_size=1, max_size=6, unique=True),
       steps=st.lists(st.tuples(edits, st.integers(0, 5)), min_size=1, max_size=6),
       data=st.data())
@settings(max_examples=150, deadline=None)
def test_every_edit_reads_as_a_full_load(ids: list[int], steps: list[tuple[str, int]],
                                          data: st.DataObject) -> None:
    servers = {f"vs{i}": data.draw(server_specs(i)) for i in ids}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "servers.yaml"
        loader = ConfigLoader(path)
        path.write_text(render(servers))
        assert outcome(loader.load) == outcome(lambda: parse_config(path.read_text(),
                                                                    str(path)))
        for edit, which in steps:
            names = sorted(servers)
            name = names[which % len(names)] if names else None
            if edit == "address" and name:
                servers[name]["addresses"][0]["address"] = "10.250.0.9/24"
                servers[name]["addresses"][0].pop("gateway", None)
                servers[name].pop("gateway", None)
                servers[name].pop("routes", None)
            elif edit == "id" and name:
                servers[name]["id"] = 201 + which
            elif edit == "remove" and name:
                del servers[name]
            elif edit == "add":
                new_id = 220 + which
                servers[f"vs{new_id}"] = data.draw(server_specs(new_id))
            elif edit == "break" and name:
                servers[name]["mode"] = "bridge"
            elif edit == "duplicate-id" and len(names) > 1:
                servers[names[1]]["id"] = servers[names[0]]["id"]
            path.write_text(render(servers))
            full = outcome(lambda: parse_config(path.read_text(), str(path)))
            assert outcome(loader.load) == full


def test_settings_and_layouts_it_does_not_split_are_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    text = ("version: 1\nservers:\n  a: {id: 1, mode: pbr, uplink: eth0, "
            "addresses: [{address: 10.0.0.5/24}]}\n")
    path.write_text(text)
    loader = ConfigLoader(path)
    assert loader.load() == parse_config(text)
    changed = text.replace("version: 1\n", "version: 1\nsettings: {table_base: 20000}\n")
    path.write_text(changed)
    assert loader.load().settings.table_base == 20000
    assert split_servers("version: 1\nservers: {a: {id: 1}}\n") is None


def test_an_invalid_edit_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    good = render({"a": {"id": 1, "mode": "pbr", "uplink": "eth0",
                         "addresses": [{"address": "10.0.0.5/24"}]}})
    path.write_text(good)
    loader = ConfigLoader(path)
    loader.load()
    path.write_text(good.replace("10.0.0.5/24", "10.0.0.500/24"))
    with pytest.raises(ConfigError) as info:
        loader.load()
    assert str(info.value) == (f"{path}:9:16: servers.a.addresses[0].address: 10.0.0.500/24: "
                               "value is not a valid IPv4 or IPv6 interface")
