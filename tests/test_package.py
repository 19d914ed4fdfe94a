"""The Debian package `make deb` builds: lintian-clean, up to date with the tree, and holding
what an operator expects (tests/vm/test_vm_systemd.py installs and runs it for real)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import DEB, ROOT

PREFIX = "opt/vsnet"
SITE = f"{PREFIX}/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def deb() -> Path:
    if not DEB.exists():
        pytest.fail(f"{DEB.relative_to(ROOT)} is missing: `make deb` builds it (make test does)",
                    pytrace=False)
    return DEB


@cache
def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as archive:
        return {m.name.removeprefix("./"): m for m in archive.getmembers()}


def content(deb: Path, path: str) -> bytes:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as archive:
        extracted = archive.extractfile("./" + path)
        assert extracted is not None, path
        return extracted.read()


def control(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--info", str(deb), name], capture_output=True, text=True,
                          check=True).stdout


def test_lintian_reports_no_errors(deb: Path) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True,
                            text=True, timeout=600)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert result.returncode == 0 and not errors, result.stdout + result.stderr


def test_the_package_is_built_from_this_tree(deb: Path) -> None:
    """A stale package would test old code in the VM: `make deb` rebuilds when sources change."""
    stale = [path.name for path in sorted((ROOT / "vsnetd").rglob("*.py"))
             if content(deb, f"{SITE}/vsnetd/{path.relative_to(ROOT / 'vsnetd')}")
             != path.read_bytes()]
    assert not stale, f"{DEB.name} is older than {stale}: run `make deb`"


def test_the_unit_is_shipped_as_it_is(deb: Path) -> None:
    assert content(deb, "lib/systemd/system/vsnetd.service") == (
        ROOT / "systemd" / "vsnetd.service").read_bytes()


def test_what_an_operator_expects_is_in_it(deb: Path) -> None:
    files = members(deb)
    for program in ("vsnetd", "vsnetctl", "vsnet-exec"):
        assert files[f"usr/bin/{program}"].linkname == f"/{PREFIX}/bin/{program}"
        script = content(deb, f"{PREFIX}/bin/{program}").decode()
        assert script.startswith(f"#!/{PREFIX}/bin/python\n"), script
    assert files[f"{PREFIX}/bin/python3.11"].linkname == "/usr/bin/python3.11"
    for page in ("man8/vsnetd.8.gz", "man8/vsnetctl.8.gz", "man1/vsnet-exec.1.gz",
                 "man5/vsnet-servers.yaml.5.gz"):
        assert f"usr/share/man/{page}" in files
    completion = content(deb, "usr/share/bash-completion/completions/vsnetctl").decode()
    assert f"/{PREFIX}/bin/python -m vsnetd.completion servers" in completion
    assert files["usr/share/bash-completion/completions/vsnet-exec"].linkname == "vsnetctl"
    for doc in ("copyright", "changelog.gz", "examples/vsnet_listen.c", "examples/servers.yaml",
                "schemas/servers.schema.json"):
        assert f"usr/share/doc/vsnet/{doc}" in files
    assert content(deb, "etc/iproute2/rt_protos.d/vsnet.conf") == (
        ROOT / "packaging" / "rt_protos.d" / "vsnet.conf").read_bytes()
    assert files["etc/vsnet/servers.d"].isdir()
    assert ("usr/lib/ocf/resource.d/vsnet/server" in files) == (
        ROOT / "packaging" / "ocf" / "vsnet").exists()
    # no compiled bytecode and no build paths: postinst compiles, prerm removes
    assert not [name for name in files if "__pycache__" in name]


def test_conffiles_and_dependencies(deb: Path) -> None:
    assert control(deb, "conffiles").split() == [
        "/etc/vsnet/servers.yaml", "/etc/default/vsnetd", "/etc/iproute2/rt_protos.d/vsnet.conf",
        "/etc/systemd/networkd.conf.d/10-vsnet.conf"]
    depends = control(deb, "control").split("Depends:")[1].splitlines()[0]
    for package in ("python3.11", "libsystemd0", "libyaml-0-2", "adduser", "iproute2"):
        assert package in depends
    # the shipped config has no VS: installing the package configures nothing by itself
    assert "servers: {}" in content(deb, "etc/vsnet/servers.yaml").decode()
    assert "addgroup --system --quiet vsnet" in control(deb, "postinst")
