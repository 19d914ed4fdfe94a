#!/usr/bin/env bash
# Install the system packages vsnet's tests, demo and benchmarks need, only when missing.
set -euo pipefail

need=()
command -v ip >/dev/null       || need+=(iproute2)
command -v unshare >/dev/null  || need+=(util-linux)
command -v mount >/dev/null    || need+=(mount)
command -v python3 >/dev/null  || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# systemd-python builds against libsystemd; the unit file test runs systemd-analyze
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(
    os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || need+=(python3-dev)
command -v gcc >/dev/null          || need+=(gcc)
command -v pkg-config >/dev/null   || need+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
command -v systemd-analyze >/dev/null || need+=(systemd)
# the confinement tests read the kernel's view of cgroup-BPF attachments with bpftool
command -v bpftool >/dev/null || [[ -x /usr/sbin/bpftool ]] || need+=(bpftool)

if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${need[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
