"""Plain block YAML read line by line, without PyYAML.

libyaml composes a node per scalar and PyYAML's constructors and resolver then run in
Python for each: most of a validation at 1,000 VS. A config is almost always plain block
YAML: indented mappings and "- " lists of plain scalars, with comments. That subset is
read here, line by line, into what ``yaml.load(text, CSafeLoader)`` would give; anything
else (quotes, flow mappings, anchors, tags, block scalars, tabs, a scalar over several
lines, non-ASCII text, duplicate keys, a number written other than plainly...) is declined
and libyaml reads the file. tests/test_config_fast.py checks the two agree.
"""

from __future__ import annotations

import re
from typing import Any

from vsnetd.config.model import MAX_DEPTH


class Declined(Exception):
    """Not in the subset: libyaml reads this document."""


_YAML_BOOLS = {word: value for value, words in ((True, "yes true on"), (False, "no false off"))
               for lower in words.split() for word in (lower, lower.title(), lower.upper())}
_YAML_NULLS = frozenset({"~", "null", "Null", "NULL"})
# PyYAML's implicit int, float and timestamp types (YAML 1.1): a plain scalar one of them
# matches is not a string
_YAML_NUMBERLIKE = re.compile(r"""(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+
    |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]
     :[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
                              re.X).match
_YAML_DECIMAL = re.compile(r"0|[1-9][0-9]*").fullmatch
_YAML_HEX = re.compile(r"0x[0-9a-fA-F]+").fullmatch
# a plain scalar: no indicator first, no ": " or " #" inside, printable ASCII only
_YAML_PLAIN = re.compile(r"[^-?:,\[\]{}#&*!|>'\"%@` ](?:[^:#]|:(?! )|(?<! )#)*(?<![: ])").fullmatch
_YAML_KEY_LINE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: +(.*))?").fullmatch
_YAML_OUTSIDE = re.compile(r"[^\x20-\x7e\n]|^(?:---|\.\.\.|%)", re.M).search


def _yaml_scalar(token: str) -> Any:
    """A plain scalar as PyYAML's SafeLoader resolves and builds it."""
    if token[0] in "-+.0123456789<=~nNyYtTfFoO":
        if _YAML_DECIMAL(token):
            return int(token)
        if _YAML_HEX(token):
            return int(token, 16)
        if token in _YAML_BOOLS:
            return _YAML_BOOLS[token]
        if token in _YAML_NULLS:
            return None
        if _YAML_NUMBERLIKE(token) or token in ("<<", "="):
            raise Declined
    return token


def _yaml_value(text: str) -> Any:
    """A value on the line of its key or dash: a plain scalar, or a one-line flow list or
    mapping of them (``{id: 1, addresses: [{address: 10.0.0.5/24}]}``)."""
    if text[0] in "[{":
        return _FlowLine(text).document()
    if not _YAML_PLAIN(text):
        raise Declined
    return _yaml_scalar(text)


_YAML_FLOW_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*").fullmatch


# A flow line's lexemes, the spaces before each skipped: a bracket or a comma, or a plain
# scalar (no indicator, no ": ", no space) with the ": " after it when it is a key (""
# where a group did not take part). The scalar's repetition is possessive: "abc" is one
# lexeme, never "a" + "bc", so the line's check cannot backtrack over the ways to cut a
# long word.
_FLOW_SCALAR = r"[A-Za-z0-9_./](?:[A-Za-z0-9_./+=~-]|:(?=[A-Za-z0-9_./:]))*+"
_FLOW_LEXEME = r" *(?:([\[\]{},])|(" + _FLOW_SCALAR + r")(: )?)"
_YAML_FLOW_LEXEMES = re.compile(_FLOW_LEXEME).findall
_YAML_FLOW_LINE = re.compile(f"(?:{_FLOW_LEXEME})* *").fullmatch


class _FlowLine:
    """A flow collection on one line, as libyaml reads it; anything else (quotes,
    multi-line flow, a key without ``": "``, a trailing comma) is declined.

    The line is checked and cut into lexemes by two regular expressions first (a flow
    line is most of a config written one VS per line: scanning it character by character
    in Python cost a fifth more)."""

    def __init__(self, text: str) -> None:
        if not _YAML_FLOW_LINE(text):
            raise Declined  # something no lexeme starts with
        self.lexemes: list[tuple[str, str, str]] = _YAML_FLOW_LEXEMES(text)
        self.at = 0

    def document(self) -> Any:
        try:
            value = self.node(0)
        except IndexError:  # the line ended inside a collection
            raise Declined from None
        if self.at != len(self.lexemes):
            raise Declined
        return value

    def node(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise Declined
        bracket, scalar, colon = self.lexemes[self.at]
        self.at += 1
        if scalar:
            if colon:
                raise Declined  # "a: b" where a value stands: a mapping to libyaml
            return _yaml_scalar(scalar)
        if bracket == "{":
            return self._mapping(depth)
        if bracket == "[":
            return self._sequence(depth)
        raise Declined

    def _closed(self, closing: str) -> bool:
        """After an item: True at the closing bracket, False after a comma."""
        bracket = self.lexemes[self.at][0]
        self.at += 1
        if bracket == closing:
            return True
        if bracket != ",":
            raise Declined
        return False

    def _mapping(self, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        lexemes = self.lexemes
        if lexemes[self.at][0] == "}":
            self.at += 1
            return result
        while True:
            _bracket, key, colon = lexemes[self.at]
            if not colon or not _YAML_FLOW_KEY(key):
                raise Declined
            self.at += 1
            name = _yaml_scalar(key)
            if name in result:
                raise Declined  # duplicate: the full path says where
            result[name] = self.node(depth + 1)
            if self._closed("}"):
                return result

    def _sequence(self, depth: int) -> list[Any]:
        result: list[Any] = []
        if self.lexemes[self.at][0] == "]":
            self.at += 1
            return result
        while True:
            result.append(self.node(depth + 1))
            if self._closed("]"):
                return result


def _nested(value: Any) -> bool:
    """Whether a value holds collections that a shared copy would let callers change."""
    return type(value) is dict or (type(value) is list and any(
        type(item) in (dict, list) for item in value))


_NO_VALUE = object()  # "key:" with nothing after it


class _YamlLines:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []
        append = self.lines.append
        comments = "#" in text
        for raw in text.split("\n"):
            content = raw.lstrip(" ")
            if not content or content[0] == "#":
                continue
            indent = len(raw) - len(content)
            if comments:
                comment = content.find(" #")
                if comment >= 0:
                    content = content[:comment]
            append((indent, content.rstrip(" ")))
        self.at = 0
        # a config repeats itself ("mode: pbr", "uplink: eth0" in every VS): each distinct
        # line is read once (values are immutable scalars; a flow list is copied)
        self.entries: dict[str, tuple[Any, Any] | None] = {}

    def entry(self, content: str) -> tuple[Any, Any] | None:
        """``key: value`` read as (key, value or _NO_VALUE), or None: not such a line."""
        line = _YAML_KEY_LINE(content)
        entry = None if line is None else (
            _yaml_scalar(line[1]), _NO_VALUE if line[2] is None else _yaml_value(line[2]))
        if entry is None or not _nested(entry[1]):
            self.entries[content] = entry  # a scalar or a list of them: safe to share
        return entry

    def node(self, depth: int) -> Any:
        indent, content = self.lines[self.at]
        if depth > MAX_DEPTH:
            raise Declined
        if content == "-" or content.startswith("- "):
            return self.sequence(indent, depth)
        return self.mapping(indent, depth)

    def below(self, indent: int, depth: int) -> Any:
        """The block under a key or dash with nothing after it (or null)."""
        lines = self.lines
        if self.at < len(lines) and lines[self.at][0] > indent:
            return self.node(depth + 1)
        return None

    def mapping(self, indent: int, depth: int) -> dict[Any, Any]:
        lines, entries, result = self.lines, self.entries, {}
        while self.at < len(lines):
            at_indent, content = lines[self.at]
            if at_indent != indent:
                if at_indent > indent:
                    raise Declined
                break
            entry: Any = entries.get(content, _NO_VALUE)
            if entry is _NO_VALUE:
                entry = self.entry(content)
            if entry is None:
                raise Declined
            key, value = entry
            if key in result:
                raise Declined  # duplicate: the full path says where
            self.at += 1
            if value is not _NO_VALUE:
                result[key] = value.copy() if type(value) is list else value
                if self.at < len(lines) and lines[self.at][0] > indent:
                    raise Declined  # a scalar continued on the next line
            elif self.at < len(lines) and lines[self.at][0] == indent and (
                    lines[self.at][1] == "-" or lines[self.at][1].startswith("- ")):
                result[key] = self.sequence(indent, depth + 1)  # a list as deep as its key
            else:
                result[key] = self.below(indent, depth)
        return result

    def sequence(self, indent: int, depth: int) -> list[Any]:
        lines, result = self.lines, []
        while self.at < len(lines):
            at_indent, content = lines[self.at]
            if at_indent != indent:
                if at_indent > indent:
                    raise Declined
                break
            if content == "-":
                self.at += 1
                result.append(self.below(indent, depth))
                continue
            if not content.startswith("- "):
                break  # the next key of a mapping holding this list at its own depth
            rest = content[2:].lstrip(" ")
            column = indent + len(content) - len(rest)
            if (self.entries[rest] if rest in self.entries else self.entry(rest)) is not None:
                # "- key: value": a mapping in the list
                lines[self.at] = (column, rest)
                if depth + 1 > MAX_DEPTH:
                    raise Declined
                result.append(self.mapping(column, depth + 1))
                continue
            if rest.startswith("-"):
                raise Declined
            self.at += 1
            result.append(_yaml_value(rest))
            if self.at < len(lines) and lines[self.at][0] > indent:
                raise Declined
        return result


def load(text: str) -> Any:
    """``text`` loaded as libyaml would, or raises :class:`Declined`."""
    if _YAML_OUTSIDE(text):
        raise Declined
    lines = _YamlLines(text)
    if not lines.lines:
        return None
    data = lines.node(0)
    if lines.at != len(lines.lines):
        raise Declined
    return data
