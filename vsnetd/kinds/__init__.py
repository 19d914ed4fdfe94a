"""Kernel object kinds vsnet manages. Each module is the one home of its kind: the plain
data type (compared by :mod:`vsnetd.diff`), its netlink encoding (sent by
:mod:`vsnetd.apply`) and its decoding (read by :mod:`vsnetd.observe`)."""

from __future__ import annotations

import socket

from vsnetd.kinds.address import Address
from vsnetd.kinds.confinement import Confinement
from vsnetd.kinds.link import Link
from vsnetd.kinds.namespace import Namespace
from vsnetd.kinds.resolver import ResolverFile
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.kinds.sysctl import Sysctl

KernelObject = Namespace | Link | Address | Route | Rule | Sysctl | ResolverFile | Confinement

__all__ = ["Address", "Confinement", "KernelObject", "Link", "Namespace", "ResolverFile", "Route", "Rule",
           "Sysctl", "family_name"]


def family_name(family: int) -> str:
    return "inet6" if family == socket.AF_INET6 else "inet"
