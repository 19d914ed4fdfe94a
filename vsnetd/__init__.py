"""vsnet: cooperative network slicing of one server process into virtual servers.

The pipeline (one module each): :mod:`vsnetd.config` -> :mod:`vsnetd.compile` ->
:mod:`vsnetd.observe` -> :mod:`vsnetd.diff` -> :mod:`vsnetd.apply`, driven by
:mod:`vsnetd.reconcile`. Kernel object kinds live in :mod:`vsnetd.kinds`.
"""

__version__ = "0.1.0"
