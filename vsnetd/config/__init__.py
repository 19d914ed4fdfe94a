"""Load and validate ``servers.yaml`` and its drop-ins: the operator's interface.

A file is checked twice over:

1. structure: types, ranges and unknown keys;
2. meaning (:mod:`.semantics`): what a single field cannot know (gateways inside a
   subnet, unique ids, non-overlapping numbers...).

Every problem becomes a :class:`ConfigIssue` carrying file, line, column and the field
path, and all of them are reported together. A config with any issue is refused as a
whole (:class:`ConfigError`): the caller keeps its last good state.

The common file (plain block YAML, valid) takes a fast path: read line by line
(:mod:`.plain_yaml`), its structure checked by hand (:mod:`.fast_check`), neither PyYAML
nor pydantic imported. Anything else goes through libyaml (:mod:`.libyaml`) and the
pydantic models (:mod:`.models`), which also say where each problem is.

The modules, in the order a file goes through them: :mod:`.model` (the plain classes
every other part of vsnet reads, and the issues), :mod:`.files` (reading a file,
checking it, assembling the files into one config), :mod:`.loader` (the files read again
and again, each on its own). docs/architecture.md places them in the pipeline.
"""

from __future__ import annotations

from typing import Any

from vsnetd.config.files import (
    ParsedFile,
    assemble,
    drop_in_dir,
    drop_in_files,
    is_drop_in,
    parse_config,
    parse_file,
    read_config_text,
)
from vsnetd.config.libyaml import SourceMap, check_expansion
from vsnetd.config.loader import ConfigLoader, load_config
from vsnetd.config.model import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_MAX_FILE_BYTES,
    MAX_DEPTH,
    AddressConfig,
    Config,
    ConfigError,
    ConfigIssue,
    DnsConfig,
    FieldPath,
    IpAddress,
    IpInterface,
    IpNetwork,
    RouteConfig,
    ServerConfig,
    Settings,
    SocketsConfig,
    render_path,
)
from vsnetd.config.semantics import check_semantics

__all__ = [
    "DEFAULT_CONFIG_PATH", "DEFAULT_MAX_FILE_BYTES", "MAX_DEPTH", "AddressConfig", "Config",
    "ConfigError", "ConfigIssue", "ConfigLoader", "DnsConfig", "FieldPath", "IpAddress",
    "IpInterface", "IpNetwork", "ParsedFile", "RouteConfig", "ServerConfig", "Settings",
    "SocketsConfig", "SourceMap", "assemble", "check_expansion", "check_semantics",
    "drop_in_dir", "drop_in_files", "is_drop_in", "json_schema", "load_config",
    "parse_config", "parse_file", "read_config_text", "render_path",
]


def json_schema(*, drop_in: bool = False) -> dict[str, Any]:
    """The JSON Schema of ``servers.yaml`` (or of a ``servers.d/*.yaml`` file)."""
    from vsnetd.config import models  # pydantic: only when asked

    return models.json_schema(drop_in=drop_in)
