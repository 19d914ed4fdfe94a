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
# the two-node cluster test and bench/cluster.py (Pacemaker + corosync in namespaces);
# ocf-tester checks the OCF agent
command -v corosync >/dev/null     || need+=(corosync)
command -v pacemakerd >/dev/null   || need+=(pacemaker)
command -v crm_resource >/dev/null || need+=(pacemaker-cli-utils)
command -v crm >/dev/null          || need+=(crmsh)
command -v ocf-tester >/dev/null   || need+=(resource-agents)
command -v xmllint >/dev/null      || need+=(libxml2-utils)
# make deb (packaging/build-deb.sh): the package's virtualenv runs on Debian's python3.11,
# its C extensions build against Debian's headers and libraries; lintian checks the result
[[ -e /usr/include/python3.11/Python.h ]] || need+=(python3.11-dev)
/usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3.11-venv)
pkg-config --exists yaml-0.1 2>/dev/null || need+=(libyaml-dev)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v strip >/dev/null         || need+=(binutils)
command -v lintian >/dev/null       || need+=(lintian)
# man pages and completion (tests/test_manpages.py), the VM's systemd scenario (curl)
command -v man >/dev/null           || need+=(man-db)
command -v groff >/dev/null         || need+=(groff-base)
[[ -e /usr/share/bash-completion/bash_completion ]] || need+=(bash-completion)
command -v curl >/dev/null          || need+=(curl)

if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${need[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # apt must not start the services it installs (corosync, pacemaker): a policy-rc.d
    # that says "no" (101) for the length of the install, removed afterwards
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    trap '[[ -n $own_policy ]] && rm -f "$policy"' EXIT
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}"
fi
