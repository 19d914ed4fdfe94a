"""What libyaml reads: a document that is not plain block YAML, loaded with its expanded
size and depth bounded; and the places in a document of the problems found in it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from vsnetd.config.model import (
    DEFAULT_MAX_FILE_BYTES,
    MAX_DEPTH,
    ConfigError,
    ConfigIssue,
    FieldPath,
    refusal,
    render_path,
)

if TYPE_CHECKING:
    import yaml


class DuplicateKey(Exception):
    """A key twice in one mapping: the slow path says where."""


@functools.cache
def _libyaml_loader() -> Any:
    """libyaml's loader (when available), refusing duplicate keys (PyYAML silently keeps
    the last one). Built on first use: PyYAML is imported only for a file the fast YAML
    reader declines."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _FastLoader(base):  # type: ignore[misc]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
            # a list or mapping as a key ("? [a, b]") is no duplicate: the constructor
            # refuses it as unhashable, and the full path says where
            keys = [key.value for key, _value in node.value if isinstance(key, yaml.ScalarNode)]
            if len(keys) != len(set(keys)):
                raise DuplicateKey
            return super().construct_mapping(node, deep)

    return _FastLoader


def check_expansion(root: yaml.Node, limit: int, file: str) -> None:
    """Refuse a node graph whose expanded size (every alias counted as a copy of what it
    names: "billion laughs") exceeds ``limit`` bytes, or that nests deeper than
    :data:`MAX_DEPTH`. Linear in the number of distinct nodes: sizes are memoized."""
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            pos = _mark(node)
            raise refusal(file, f"nested deeper than {MAX_DEPTH} levels", pos.line, pos.column)
        if id(node) in in_progress:
            pos = _mark(node)
            raise refusal(file, "an alias refers to a node that contains it", pos.line,
                           pos.column)
        in_progress.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 2 + sum(size(k, depth + 1) + size(v, depth + 1) + 2 for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 2 + sum(size(item, depth + 1) + 2 for item in node.value)
        else:
            total = len(node.value) + 1
        in_progress.discard(id(node))
        if total > limit:
            pos = _mark(node)
            raise refusal(file, f"the document expands (aliases included) to more than "
                                 f"{limit} bytes (settings.max_file_bytes)", pos.line, pos.column)
        sizes[id(node)] = total
        return total

    size(root, 0)


class Unbuildable(Exception):
    """A value its YAML tag refuses: the slow path says where."""


def load(text: str, file: str, limit: int) -> Any:
    """The document libyaml loads from ``text``, its expanded size bounded between
    composing and building."""
    import yaml

    loader = _libyaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text:  # no alias without one: the document is the text, under the cap
            check_expansion(node, limit, file)
        try:
            return loader.construct_document(node)
        except (yaml.YAMLError, DuplicateKey, RecursionError):
            raise
        except Exception as exc:  # PyYAML's constructors raise anything on a value their
            # tag refuses: `!!int ` IndexError, `!!timestamp x` AttributeError...
            raise Unbuildable from exc
    finally:
        loader.dispose()


class _Position(NamedTuple):
    line: int
    column: int


class SourceMap:
    """Where each value (and each mapping key) of a YAML document stands."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[FieldPath, _Position] = {}
        self.keys: dict[FieldPath, _Position] = {}

    def locate(self, path: FieldPath, *, key: bool = False) -> tuple[FieldPath, _Position]:
        """The longest prefix of ``path`` present in the document, and its position."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            table = self.keys if key and end == len(path) else self.values
            if prefix in table:
                return prefix, table[prefix]
        return (), _Position(1, 1)

    def issue(self, path: FieldPath, message: str, *, key: bool = False) -> ConfigIssue:
        found, pos = self.locate(path, key=key)
        return ConfigIssue(self.file, pos.line, pos.column, render_path(found), message)


def _mark(node: yaml.Node) -> _Position:
    return _Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _construct(
    node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
    issues: list[ConfigIssue],
) -> Any:
    """Build plain Python data from a node tree, recording each node's position."""
    import yaml

    smap.values[path] = _mark(node)
    if node.tag not in _PLAIN_COLLECTIONS and not isinstance(node, yaml.ScalarNode):
        issues.append(smap.issue(path, f"YAML tag {node.tag} is not supported here"))
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key, child, value_node in _entries(node, path, loader, smap, issues):
            result[key] = (None if value_node is None
                           else _construct(value_node, child, loader, smap, issues))
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, index), loader, smap, issues)
            for index, item in enumerate(node.value)
        ]
    return _built(node, path, loader, smap, issues)  # _UNBUILT comes with an issue


# The tags of the collections a config is made of; a collection tagged otherwise (!!set,
# !!omap, !!python/...) is refused rather than read as a plain one.
_PLAIN_COLLECTIONS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_UNBUILT = object()


def _entries(node: yaml.MappingNode, path: FieldPath, loader: yaml.SafeLoader,
             smap: SourceMap, issues: list[ConfigIssue]
             ) -> Iterator[tuple[str | int, FieldPath, yaml.Node | None]]:
    """A mapping's entries as the safe loader builds its dict, each key's position
    recorded: (key, its path, the node of its value), or None for the value where a key
    first stands that a later entry overrides (the dict keeps that place). Merge keys
    (``<<: *defaults``) bring their mappings' entries first, which the node's own
    override; a key twice among the node's own is an issue at the second."""
    import yaml

    merged: int | None = getattr(node, _MERGED, None)
    if merged is None:  # not flattened yet (an alias brings the same node again)
        own = len(node.value) - sum(key.tag == _MERGE for key, _value in node.value)
        try:
            loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:  # "<<: 3"
            mark = exc.problem_mark or node.start_mark
            issues.append(ConfigIssue(smap.file, mark.line + 1, mark.column + 1,
                                      render_path(path), f"YAML: {exc.problem}"))
            return
        merged = len(node.value) - own
        setattr(node, _MERGED, merged)  # how many of its entries came from merge keys
    keys = [_built(key_node, path, loader, smap, issues) for key_node, _value in node.value]
    # the entry each key's value comes from: the last merged one, or the first of its own
    winner = {key: index for index, key in enumerate(keys[:merged]) if isinstance(key, str | int)}
    first_own: dict[Any, int] = {}
    for index in range(merged, len(keys)):
        if isinstance(keys[index], str | int):
            first_own.setdefault(keys[index], index)
    winner.update(first_own)
    for index, (key_node, value_node) in enumerate(node.value):
        key = keys[index]
        if key is _UNBUILT:
            continue
        if not isinstance(key, str | int):
            issues.append(smap.issue(path, f"mapping key {key!r} must be a string"))
            continue
        child = (*path, key)
        if winner[key] == index:
            smap.keys[child] = _mark(key_node)
            yield key, child, value_node
        elif index < merged:  # overridden by a later entry: the dict keeps this place
            yield key, child, None
        else:  # its own key twice
            smap.keys[child] = _mark(key_node)
            issues.append(smap.issue(child, "duplicate key", key=True))


_MERGE = "tag:yaml.org,2002:merge"
_MERGED = "vsnet_merged"


def _built(node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
           issues: list[ConfigIssue]) -> Any:
    """What the safe loader builds of ``node``, or _UNBUILT with an issue where it stands
    when it cannot (an unknown tag, ``!!binary`` that is not base64, ``!!bool maybe``)."""
    import yaml

    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        problem, mark = str(exc.problem), exc.problem_mark or node.start_mark
    except RecursionError:
        raise  # parse_file says how deep is too deep
    except Exception as exc:  # PyYAML's constructors raise anything on a value their tag
        # refuses: `!!bool maybe` KeyError, `!!int ` IndexError, `!!timestamp x` AttributeError
        why = f" ({exc})" if isinstance(exc, ValueError) else ""  # said for people
        problem, mark = (f"{node.value!r} is no {node.tag}{why}"
                         if isinstance(node, yaml.ScalarNode)
                         else f"what it holds cannot be built{why}"), node.start_mark
    issues.append(ConfigIssue(smap.file, mark.line + 1, mark.column + 1, render_path(path),
                              f"YAML: {problem}"))
    return _UNBUILT


def _safe_loader(text: str) -> yaml.SafeLoader:
    import yaml

    loader: yaml.SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml
    return loader


def locate(text: str, file: str, paths: Iterable[FieldPath]) -> SourceMap:
    """Where the values and mapping keys along ``paths`` stand, as :func:`load_located`
    records them, walking only those paths: a problem found in a list of 200,000 items
    costs the document's nodes while they are walked, not a position kept for each."""
    import yaml

    smap = SourceMap(file)
    wanted = {path[:end] for path in paths for end in range(len(path) + 1)}
    loader = _safe_loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _walk(root, (), loader, smap, wanted)
    except (yaml.YAMLError, RecursionError):
        pass  # read once already (parse_file): what was found stands, the rest at 1:1
    finally:
        loader.dispose()
    return smap


def _walk(node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
          wanted: set[FieldPath]) -> None:
    """:func:`_construct`'s positions, for the nodes whose path is ``wanted`` only."""
    import yaml

    smap.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        for _key, child, value_node in _entries(node, path, loader, smap, []):
            if value_node is not None and child in wanted:
                _walk(value_node, child, loader, smap, wanted)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if (*path, index) in wanted:
                _walk(item, (*path, index), loader, smap, wanted)


def load_located(text: str, file: str, limit: int = 0) -> tuple[Any, SourceMap]:
    """The document and where each of its values and keys stands; every problem of the
    YAML itself (syntax, tags, values, size) raised together as a :class:`ConfigError`."""
    import yaml

    smap = SourceMap(file)
    loader = _safe_loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise ConfigError(
                [ConfigIssue(file, line, col, "", f"YAML syntax: {exc.problem or exc}")]
            ) from None
        except yaml.reader.ReaderError as exc:  # a character YAML forbids, such as NUL
            before = text.encode()[:exc.position].decode()  # libyaml counts bytes
            line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
            raise ConfigError([ConfigIssue(file, line, col, "", f"YAML: {exc.reason}")]
                              ) from None
        if root is None:
            raise ConfigError([ConfigIssue(file, 1, 1, "", "the file is empty")])
        check_expansion(root, limit or DEFAULT_MAX_FILE_BYTES, file)
        issues: list[ConfigIssue] = []
        data = _construct(root, (), loader, smap, issues)
        if issues:
            raise ConfigError(issues)
        return data, smap
    finally:
        loader.dispose()
