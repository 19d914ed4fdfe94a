"""Run shell scripts under a real Debian kernel, in a throwaway qemu VM.

This machine's kernel lacks 802.1Q, dummy, VRF and ipvlan, so tests that need them run
inside a VM instead (docs/architecture.md, "Test layers"):

- the kernel is Debian's (``KERNEL_PACKAGE``), downloaded with ``apt-get download`` and
  unpacked, with its modules, under ``.cache/vm/`` (:func:`ensure_image`, once);
- a tiny busybox initramfs loads the virtio/9p/overlay modules, mounts the host's ``/``
  read-only over 9p with a tmpfs overlay on top (so the VM can write, but nothing reaches
  the host), and hands over to the host's own userland: ``bash``, ``ip``, ``python3`` and
  the project's ``.venv`` all work inside;
- qemu runs with software emulation (KVM hangs on this machine) and no network devices at
  all (``-net none``), so nothing inside the VM can reach any network.

:func:`run_in_vm` boots one VM per call (~6 s for a trivial script), runs a bash script
as root with cwd the project's directory and returns its exit status and combined stdout/stderr.
The script's output travels on a second serial port, apart from the kernel's console, and
ends with the line ``VSNET-VM-EXIT=<status>``; without that line the result is ``-1`` plus
the console log.

From a shell: ``python -m tests.vm.harness`` builds the image; ``python -m tests.vm.harness
-c 'ip -V'`` runs a script in the VM.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests import sandbox

PROJECT = Path(__file__).resolve().parents[2]
# VSNET_VM_CACHE: another place for it (e.g. one shared by several checkouts)
CACHE = Path(os.environ.get("VSNET_VM_CACHE") or PROJECT / ".cache" / "vm")

# The exact package: a wildcard would download dozens of kernels. Debian 12's kernel ships
# 8021q, vrf, dummy and ipvlan as modules.
KERNEL_PACKAGE = "linux-image-6.1.0-56-amd64"
KERNEL_VERSION = KERNEL_PACKAGE.removeprefix("linux-image-")

# Debian packages the harness needs on the host (installed on first use if missing).
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "cpio")

# What the initramfs must load to reach the host's root; their dependencies come from
# modules.dep (virtio core, netfs, fscache, 9pnet, ...), in load order.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

EXIT_MARKER = "VSNET-VM-EXIT="
VM_MEMORY_MB = 1024

# PID 1 inside the initramfs (busybox sh). Placeholders: @MODULES@, @VERSION@, @MODULES_DIR@.
INIT = r"""#!/bin/busybox sh
# vsnet VM, stage 1: reach the host's root over 9p, make it writable with a tmpfs overlay,
# mount the kernel's own modules, then switch_root into stage 2 (the host's bash).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc

fail() {
    echo "vsnet-vm init: $*"
    echo o >/proc/sysrq-trigger  # power off: qemu exits, the host reports the missing status
    sleep 60
}

for module in @MODULES@; do
    insmod "/modules/$module.ko" || fail "insmod $module"
done

# The virtio device may need a moment after its driver loads.
tries=0
# cache=loose: the export is read-only and the VM short-lived; without a page cache every
# read crosses 9p again (dpkg and apt read thousands of database files, each run)
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower; do
    tries=$((tries + 1))
    [ "$tries" -ge 20 ] && fail "cannot mount the host root over 9p"
    sleep 0.2
done
mount -t tmpfs -o mode=0755 vsnet-vm-rw /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work vsnet-vm /newroot \
    || fail "cannot mount the overlay"

mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t tmpfs -o mode=0755 run /newroot/run
# no tmpfs over /tmp: the project may live there (a CI clone); writes to it land in
# the overlay's upper layer and never reach the host anyway
# The host's /lib/modules belongs to the host's kernel: show this kernel's instead.
mkdir -p /newroot/lib/modules/@VERSION@
mount --bind /newroot@MODULES_DIR@ /newroot/lib/modules/@VERSION@

mkdir /newroot/run/vsnet-vm
cp /stage2 /newroot/run/vsnet-vm/stage2
run=
init=bash
for arg in $(cat /newroot/proc/cmdline); do
    case "$arg" in
        vsnet.run=*) run="${arg#vsnet.run=}" ;;
        vsnet.init=*) init="${arg#vsnet.init=}" ;;
    esac
done
[ -n "$run" ] || fail "no vsnet.run= on the kernel command line"
[ "$init" = bash ] && exec switch_root /newroot /bin/bash /run/vsnet-vm/stage2 "$run"

# vsnet.init=systemd: the host's systemd as PID 1 (docs/architecture.md, the test layers);
# vsnet-vm.target runs stage 2 as a service.
# With these files systemd believes it runs in a container and ignores the kernel command line.
rm -f /newroot/.dockerenv /newroot/run/.containerenv
# a container's policy-rc.d (exit 101) forbids maintainer scripts to start services
rm -f /newroot/usr/sbin/policy-rc.d
units=/newroot/etc/systemd/system
mkdir -p "$units" /newroot/etc/tmpfiles.d
# systemd-tmpfiles would empty /tmp at boot, where the project may live (a CI clone)
ln -sf /dev/null /newroot/etc/tmpfiles.d/tmp.conf
# what the host enabled (databases, cluster stacks, gettys, timers) has no business here
for wanted in "$units"/*.wants/*; do
    [ -L "$wanted" ] || [ -e "$wanted" ] || continue
    ln -sf /dev/null "$units/${wanted##*/}"
done
printf '%s\n' '[Unit]' 'Description=vsnet VM: basic system plus the test script' \
    'Requires=basic.target vsnet-vm-run.service' 'After=basic.target' 'AllowIsolate=yes' \
    >"$units/vsnet-vm.target"
printf '%s\n' '[Unit]' 'Description=vsnet VM: the test script (output on ttyS1)' \
    'After=basic.target' '[Service]' 'Type=simple' \
    "ExecStart=/bin/bash /run/vsnet-vm/stage2 $run" >"$units/vsnet-vm-run.service"
exec switch_root /newroot /lib/systemd/systemd
"""

# PID 1 after switch_root: the host's userland on the VM's kernel.
STAGE2 = r"""# vsnet VM, stage 2: run the script, report its exit status, power off.
# $1 is the run directory (on the host, seen through the overlay): script.sh, env.sh.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
. "$1/env.sh"
echo vsnet-vm >/proc/sys/kernel/hostname
mkdir -p /run/netns /run/lock
ip link set lo up

# ttyS1 carries only the script's output: raw, so "\n" is not turned into "\r\n".
out=/dev/ttyS1
stty -F "$out" raw -echo
(cd "@PROJECT@" && exec bash "$1/script.sh") </dev/null >"$out" 2>&1
status=$?
echo "@MARKER@$status" >"$out"
echo "@MARKER@$status"
echo o >/proc/sysrq-trigger
sleep 60
"""


class HarnessError(RuntimeError):
    """The VM image could not be prepared."""


@dataclass(frozen=True)
class Image:
    version: str  # kernel release, e.g. 6.1.0-56-amd64
    kernel: Path  # vmlinuz
    initramfs: Path  # uncompressed newc cpio: busybox, the modules listed above, the init
    modules: Path  # the unpacked /lib/modules/<version>, depmod-ed; bind-mounted in the VM


@dataclass(frozen=True)
class VmResult:
    returncode: int  # the script's exit status; -1 if the VM did not report one
    output: str  # the script's stdout + stderr; the whole console log when returncode is -1
    timed_out: bool = False  # the host killed qemu after `timeout` seconds


def _run(argv: Sequence[str], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a build step; fail with its output rather than a bare exit status."""
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def _need_registry(what: str) -> None:
    """Fail fast inside the test sandbox: it has no network, apt would retry for ~20 s."""
    if sandbox.inside():
        raise HarnessError(f"{what} needs the package registry, and this runs inside the "
                           "network-less test sandbox: build the VM image once outside it, "
                           "with `.venv/bin/python -m tests.vm.harness` in the project's directory")


def _installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                            capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.endswith(" installed")


def _ensure_host_packages() -> None:
    missing = [p for p in HOST_PACKAGES if not _installed(p)]
    if not missing:
        return
    _need_registry(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def _download_kernel(into: Path) -> Path:
    _need_registry(f"downloading {KERNEL_PACKAGE}")
    # As root, apt drops to the _apt user for downloads, which cannot write here.
    download = ["apt-get", "download", "-o", "APT::Sandbox::User=root", KERNEL_PACKAGE]
    try:
        try:
            _run(download, cwd=into)
        except HarnessError:  # maybe only the package index is missing or stale
            _run(["apt-get", "update", "-qq"])
            _run(download, cwd=into)
    except HarnessError as error:
        raise HarnessError(f"cannot download {KERNEL_PACKAGE}; if Debian no longer has it, "
                           f"update KERNEL_PACKAGE in {__file__}\n{error}") from None
    (deb,) = into.glob(f"{KERNEL_PACKAGE}_*.deb")
    return deb


def _ensure_kernel_tree(base: Path) -> Path:
    """Download, unpack and depmod the kernel package (once); return the unpacked root."""
    tree = base / "root"
    done = base / "root.done"
    if done.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)  # a previous, interrupted attempt
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as download:
        deb = _download_kernel(Path(download))
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
    _run(["depmod", "-b", str(tree), KERNEL_VERSION])
    done.touch()
    return tree


def _module_name(path: str) -> str:
    name = Path(path).name.split(".ko")[0]
    return name.replace("-", "_")  # the kernel treats - and _ in module names alike


def _load_order(modules: Path, wanted: Sequence[str]) -> list[Path]:
    """The module files to insmod, dependencies first, for `wanted` (built-ins skipped)."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        target, _, needs = line.partition(":")
        deps[target] = needs.split()
    by_name = {_module_name(path): path for path in deps}
    builtin = {_module_name(line) for line in (modules / "modules.builtin").read_text().split()}

    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise HarnessError(f"kernel {KERNEL_VERSION} has no module {name}")
    return [modules / path for path in order]


def _copy_module(source: Path, target_dir: Path) -> str:
    """Copy a module into the initramfs, uncompressed (busybox insmod may lack xz)."""
    name = _module_name(source.name)
    target = target_dir / f"{name}.ko"
    if source.name.endswith(".ko"):
        shutil.copyfile(source, target)
    elif source.name.endswith(".ko.xz"):
        target.write_bytes(lzma.decompress(source.read_bytes()))
    else:
        raise HarnessError(f"unsupported module compression: {source}")
    return name


def _build_initramfs(modules: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as staging_name:
        staging = Path(staging_name)
        for directory in ("bin", "dev", "proc", "lower", "rw", "newroot", "modules"):
            (staging / directory).mkdir()
        shutil.copy2(shutil.which("busybox", path="/bin:/usr/bin") or "/bin/busybox",
                     staging / "bin" / "busybox")
        names = [_copy_module(path, staging / "modules")
                 for path in _load_order(modules, INITRAMFS_MODULES)]
        # resolved: stage 1 binds it from under /newroot, where an absolute symlink on the
        # way (a worktree's .cache -> /work/main/.cache) would point into the initramfs
        init = (INIT.replace("@MODULES@", " ".join(names))
                .replace("@VERSION@", KERNEL_VERSION)
                .replace("@MODULES_DIR@", str(modules.resolve())))
        (staging / "init").write_text(init)
        (staging / "init").chmod(0o755)
        (staging / "stage2").write_text(STAGE2.replace("@MARKER@", EXIT_MARKER)
                                        .replace("@PROJECT@", str(PROJECT)))

        files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*"))
        archive = target.with_suffix(".tmp")
        with archive.open("wb") as out:
            cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                                  cwd=staging, input="\n".join(files).encode(),
                                  stdout=out, stderr=subprocess.PIPE)
        if cpio.returncode != 0:
            raise HarnessError(f"cpio failed: {cpio.stderr.decode(errors='replace')}")
        archive.replace(target)


def _recipe() -> str:
    """Identifies what goes into the initramfs: rebuild it when any of this changes."""
    text = "\0".join([INIT, STAGE2, EXIT_MARKER, KERNEL_VERSION, *INITRAMFS_MODULES, str(CACHE),
                      str(PROJECT), str(CACHE.resolve())])
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_image() -> Image:
    """The kernel, its modules and the initramfs, built under .cache/vm/ on first use.

    Installs missing host packages and downloads the kernel package, both needing the
    package registry, so the first call must happen outside the (network-less) sandbox.
    """
    _ensure_host_packages()
    base = CACHE / KERNEL_VERSION
    tree = _ensure_kernel_tree(base)
    modules = tree / "lib" / "modules" / KERNEL_VERSION
    recipe = _recipe()
    # one file per recipe: checkouts sharing .cache/vm (worktrees, CI clones) each keep theirs
    initramfs = base / f"initramfs-{recipe[:16]}.cpio"
    if not initramfs.exists():
        _build_initramfs(modules, initramfs)
    return Image(version=KERNEL_VERSION, kernel=tree / "boot" / f"vmlinuz-{KERNEL_VERSION}",
                 initramfs=initramfs, modules=modules)


# systemd as PID 1: the target stage 1 writes; no gettys, no first-boot questions
SYSTEMD_CMDLINE = ("vsnet.init=systemd systemd.unit=vsnet-vm.target systemd.getty_auto=0 "
                   "systemd.firstboot=0")


def qemu_command(image: Image, run_dir: Path, init: str = "bash") -> list[str]:
    """The qemu command line booting `image` to run ``run_dir/script.sh`` (host paths),
    started by bash as PID 1 (``init="bash"``) or as a service of the host's systemd."""
    if any(c.isspace() for c in str(run_dir)):
        raise ValueError(f"the run directory goes on the kernel command line: {run_dir!r}")
    if init not in ("bash", "systemd"):
        raise ValueError(f"init is bash or systemd, not {init!r}")
    cmdline = f"console=ttyS0 panic=-1 vsnet.run={run_dir}"
    if init == "systemd":
        cmdline += " " + SYSTEMD_CMDLINE
    return [
        "qemu-system-x86_64",
        "-accel", "tcg",  # KVM hangs on this machine
        "-m", str(VM_MEMORY_MB), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-net", "none",  # no network devices: the VM cannot reach anything
        "-kernel", str(image.kernel), "-initrd", str(image.initramfs), "-append", cmdline,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-serial", f"file:{run_dir / 'console.log'}",  # ttyS0: the kernel's console
        "-serial", f"file:{run_dir / 'output.log'}",  # ttyS1: the script's output, exit status
    ]


def _vm_path() -> str:
    """PATH inside the VM: the interpreter behind this one first, so `python3` there is
    the project's Python (not Debian's); not the caller's PATH, as pyenv's shims cost ~5 s
    per call under emulation."""
    interpreter = Path(sys.base_prefix) / "bin"
    return ":".join([str(interpreter), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                     "/sbin", "/bin"])


def _text(stream: str | bytes | None) -> str:
    # TimeoutExpired carries bytes even when the process ran with text=True.
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream or ""


def _read(path: Path) -> str:
    return path.read_bytes().decode(errors="replace") if path.exists() else ""


def run_in_vm(script: str, timeout: float = 180, init: str = "bash") -> VmResult:
    """Boot a VM, run `script` with bash as root (cwd: the project), return status and output.

    The VM sees the host's files read-only (its writes land in a tmpfs) and has no network
    devices. The host kills qemu after `timeout` seconds. ``init="systemd"`` boots the
    host's systemd as PID 1 and runs the script as one of its services (~15 s more).
    """
    image = ensure_image()
    runs = CACHE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    # The host's / is visible in the VM, so the run directory is how the script gets in.
    with tempfile.TemporaryDirectory(dir=runs, prefix="run-") as run_name:
        run_dir = Path(run_name)
        (run_dir / "script.sh").write_text(script)
        (run_dir / "env.sh").write_text(f"export PATH={shlex.quote(_vm_path())}\n")
        timed_out = False
        try:
            qemu = subprocess.run(qemu_command(image, run_dir, init), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
            ending = f"qemu exited with status {qemu.returncode}"
            qemu_messages = qemu.stdout + qemu.stderr
        except subprocess.TimeoutExpired as expired:  # subprocess.run has killed qemu
            timed_out = True
            ending = f"timed out after {timeout:g} s, qemu killed"
            qemu_messages = _text(expired.stdout) + _text(expired.stderr)
        output = _read(run_dir / "output.log")
        console = _read(run_dir / "console.log")

    head, marker, tail = output.rpartition(EXIT_MARKER)
    if marker and tail.strip().isdigit():  # the script finished, even if power-off did not
        return VmResult(returncode=int(tail), output=head, timed_out=timed_out)
    report = (f"[vsnet vm] no exit status from the VM ({ending})\n"
              f"--- console ---\n{console}\n"
              f"--- script output ---\n{output}\n"
              + (f"--- qemu ---\n{qemu_messages}\n" if qemu_messages else ""))
    return VmResult(returncode=-1, output=report, timed_out=timed_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.harness",
                                     description="Build the test VM image; optionally run a script in it.")
    parser.add_argument("-c", dest="script", help="bash script to run inside the VM")
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--init", choices=("bash", "systemd"), default="bash",
                        help="PID 1 after the initramfs: bash, or the host's systemd")
    args = parser.parse_args(argv)
    try:
        image = ensure_image()
    except HarnessError as error:
        print(f"vm harness: {error}", file=sys.stderr)
        return 1
    if args.script is None:
        print(f"kernel {image.version}\n  {image.kernel}\n  {image.initramfs}\n  {image.modules}")
        return 0
    result = run_in_vm(args.script, timeout=args.timeout, init=args.init)
    sys.stdout.write(result.output)
    return result.returncode if result.returncode >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
