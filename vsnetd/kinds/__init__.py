"""Kernel object kinds vsnet manages, and their registry.

Each module is the one home of its kind: the plain data type (compared by
:mod:`vsnetd.diff`), its netlink encoding (sent by :mod:`vsnetd.apply`), its decoding (read
by :mod:`vsnetd.observe`), and the :class:`~vsnetd.kinds.kind.Kind` object that tells the
pipeline how to observe, compare, plan and change it. :data:`REGISTRY` lists the kinds in
the order they are created (deleted in the reverse one); the recipe for a new kind is in
CONTRIBUTING.md.
"""

from __future__ import annotations

from typing import Any

from vsnetd.kinds import address, confinement, link, namespace, resolver, route, rule, sysctl
from vsnetd.kinds.address import Address
from vsnetd.kinds.confinement import Confinement
from vsnetd.kinds.kind import KernelObject, Kind
from vsnetd.kinds.link import Link
from vsnetd.kinds.namespace import Namespace
from vsnetd.kinds.resolver import ResolverFile
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.kinds.sysctl import Sysctl

# In creation order: a namespace before what goes in it, a device before its addresses,
# an address before the routes using it as ``src``, a table's routes before the rule
# pointing at it, the mark rule before the programs setting the mark.
REGISTRY: tuple[Kind[Any], ...] = (
    namespace.KIND,
    link.KIND,
    address.KIND,
    route.KIND,
    rule.KIND,
    confinement.KIND,
    sysctl.KIND,
    resolver.KIND,
)
KINDS: dict[str, Kind[Any]] = {kind.name: kind for kind in REGISTRY}

__all__ = ["KINDS", "REGISTRY", "Address", "Confinement", "KernelObject", "Kind", "Link",
           "Namespace", "ResolverFile", "Route", "Rule", "Sysctl"]
