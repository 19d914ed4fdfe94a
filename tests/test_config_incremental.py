"""The drop-in directory, and an intake no file can hang or blow up.

The daemon's loader reads again only the files that changed; whatever the edits, it
reads exactly what a fresh full load reads, errors included.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import server_specs
from vsnetd.compile import compile_config, compile_edit, count_shared_users
from vsnetd.config import Config, ConfigError, ConfigLoader, load_config
from vsnetd.state import DesiredState

MAIN = "version: 1\nsettings: {table_base: 20000}\n"


def render(servers: dict[str, dict[str, Any]]) -> str:
    return "# a drop-in\n" + yaml.safe_dump({"servers": servers}, sort_keys=False)


def outcome(load: Any) -> Any:
    try:
        return load()
    except ConfigError as exc:
        return [str(issue) for issue in exc.issues]


edits = st.sampled_from(["address", "id", "remove", "add", "break", "duplicate-id", "move",
                         "drop-file"])


@given(ids=st.lists(st.integers(1, 200), min_size=1, max_size=6, unique=True),
       steps=st.lists(st.tuples(edits, st.integers(0, 5)), min_size=1, max_size=6),
       data=st.data())
@settings(max_examples=100, deadline=None)
def test_every_edit_reads_as_a_full_load(ids: list[int], steps: list[tuple[str, int]],
                                          data: st.DataObject) -> None:
    # the VS spread over the main file and three drop-ins
    files: dict[str, dict[str, dict[str, Any]]] = {"main": {}, "a": {}, "b": {}, "c": {}}
    for index, i in enumerate(ids):
        files[sorted(files)[index % 4]][f"vs{i}"] = data.draw(server_specs(i))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "servers.yaml"
        directory = Path(tmp) / "servers.d"
        directory.mkdir()

        def write(name: str) -> Path:
            if name == "main":
                path.write_text(MAIN + yaml.safe_dump({"servers": files["main"]}))
                return path
            target = directory / f"{name}.yaml"
            if name in files:
                target.write_text(render(files[name]))
            else:
                target.unlink(missing_ok=True)
            return target

        for name in files:
            write(name)
        loader = ConfigLoader(path)
        assert outcome(loader.load) == outcome(lambda: load_config(path))
        previous: tuple[Config, DesiredState] | None = None
        for edit, which in steps:
            holder = sorted(files)[which % len(files)]
            servers = files[holder]
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
            elif edit == "move" and name:  # into another file: defined twice meanwhile
                other = sorted(files)[(which + 1) % len(files)]
                files[other][name] = servers[name]
                written = write(other)
                assert outcome(lambda w=written: loader.load([w])) == outcome(
                    lambda: load_config(path))
                del servers[name]
            elif edit == "drop-file" and holder != "main":
                del files[holder]
            changed = write(holder)
            assert outcome(lambda c=changed: loader.load([c])) == outcome(lambda: load_config(path))
            try:
                config = loader.load([])
            except ConfigError:
                continue
            # the daemon's compile of an edit is that of the whole config, edit after edit,
            # and so are its counts of the VS needing each shared rule
            edited = compile_edit(config, previous)
            assert edited == compile_config(config)
            assert count_shared_users(edited) == Counter(
                key for server in edited.servers.values() for key in server.shared)
            previous = (config, edited)


def vs(server_id: int, address: str) -> dict[str, Any]:
    return {"id": server_id, "mode": "pbr", "uplink": "eth0",
            "addresses": [{"address": address}]}


def test_a_loader_that_forgot_reads_every_file_again(tmp_path: Path) -> None:
    """After a read that failed half-way (out of memory), what the loader kept is not
    trusted: the next load, whatever it is told changed, reads every file."""
    path = tmp_path / "servers.yaml"
    path.write_text(MAIN)
    (tmp_path / "servers.d").mkdir()
    web, db = (tmp_path / "servers.d" / f"{name}.yaml" for name in ("web", "db"))
    web.write_text(render({"web": vs(1, "10.0.0.5/24")}))
    db.write_text(render({"db": vs(2, "10.0.0.6/24")}))
    loader = ConfigLoader(path)
    loader.load()
    web.write_text(render({"web": vs(1, "10.0.0.7/24")}))  # a change the loader never heard of
    db.write_text(render({"db": vs(2, "10.0.0.8/24")}))
    told_of_db = loader.load({db}).servers
    assert str(told_of_db["web"].addresses[0].address) == "10.0.0.5/24"  # kept from before
    loader.forget()
    assert loader.load({db}) == load_config(path)
    assert str(loader.load({db}).servers["web"].addresses[0].address) == "10.0.0.7/24"


def test_a_vs_defined_twice_names_both_files(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("version: 1\nservers:\n  web: {id: 1, mode: pbr, uplink: eth0, "
                    "addresses: [{address: 10.0.0.5/24}]}\n")
    (tmp_path / "servers.d").mkdir()
    drop_in = tmp_path / "servers.d" / "web.yaml"
    drop_in.write_text(render({"web": vs(2, "10.0.0.6/24")}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(i) for i in info.value.issues] == [
        f"{drop_in}:3:3: servers.web: web is already defined in {path}"]


def test_errors_of_every_file_come_together(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("version: 1\n")
    (tmp_path / "servers.d").mkdir()
    one, two = tmp_path / "servers.d" / "1.yaml", tmp_path / "servers.d" / "2.yaml"
    one.write_text(render({"a": vs(1, "10.0.0.5/24")}))
    two.write_text(render({"b": {**vs(1, "10.0.0.6/24"), "colour": "red"}}))
    (tmp_path / "servers.d" / ".2.yaml.swp").write_text("not: [yaml")  # not a drop-in
    (tmp_path / "servers.d" / "notes.txt").write_text("nor this")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(i) for i in info.value.issues] == [
        f"{two}:4:9: servers.b.id: id 1 is already used by a",
        f"{two}:9:5: servers.b.colour: unknown key",
    ]
    loader = ConfigLoader(path)
    with pytest.raises(ConfigError):
        loader.load()
    two.write_text(render({"b": vs(2, "10.0.0.6/24")}))
    assert sorted(loader.load([two]).servers) == ["a", "b"]
    two.unlink()
    assert sorted(loader.load([two]).servers) == ["a"]


# --------------------------------------------------------------------------- hostile files


def refusal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(issue) for issue in info.value.issues]


def test_a_symlink_to_a_device_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.symlink_to("/dev/zero")
    assert refusal(path) == [f"{path}:0:0: refused: a character device, not a regular file"]


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    os.mkfifo(path)
    assert refusal(path) == [f"{path}:0:0: refused: a named pipe, not a regular file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("version: 1\n")
    (tmp_path / "servers.d").mkdir()
    (tmp_path / "servers.d" / "x.yaml").mkdir()
    assert refusal(path) == [
        f"{tmp_path}/servers.d/x.yaml:0:0: refused: a directory, not a regular file"]


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    with path.open("wb") as sparse:  # 17 MiB of nothing, allocated on no disk
        sparse.truncate(17 << 20)
    assert refusal(path) == [
        f"{path}:0:0: refused: {17 << 20} bytes, more than {16 << 20} (settings.max_file_bytes)"]


def test_the_size_cap_is_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("version: 1\nsettings: {max_file_bytes: 4096}\n")
    (tmp_path / "servers.d").mkdir()
    loader = ConfigLoader(path)
    assert loader.load().settings.max_file_bytes == 4096
    big = tmp_path / "servers.d" / "big.yaml"
    big.write_text("servers: {}\n" + "#" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        loader.load([big])
    assert [str(i) for i in info.value.issues] == [
        f"{big}:0:0: refused: 5013 bytes, more than 4096 (settings.max_file_bytes)"]


def test_billion_laughs_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ["version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    lines.append("servers: {x: *a9}")
    path = tmp_path / "servers.yaml"
    path.write_text("\n".join(lines) + "\n")
    [issue] = refusal(path)
    assert issue.startswith(f"{path}:")
    assert issue.endswith(f"the document expands (aliases included) to more than {16 << 20} "
                          "bytes (settings.max_file_bytes)")


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("version: 1\nservers: " + "[" * 500 + "]" * 500 + "\n")
    [issue] = refusal(path)
    assert issue.endswith("nested deeper than 32 levels")
