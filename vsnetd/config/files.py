"""One file read (a regular file only, bounded) and checked, and the files of a config
assembled into one: every issue of every file, and those between files, together.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from vsnetd.config import libyaml, plain_yaml
from vsnetd.config.fast_check import fast_file
from vsnetd.config.libyaml import SourceMap
from vsnetd.config.model import (
    DEFAULT_MAX_FILE_BYTES,
    MAX_DEPTH,
    Config,
    ConfigError,
    ConfigIssue,
    FieldPath,
    ServerConfig,
    Settings,
    refusal,
)
from vsnetd.config.semantics import (
    Claims,
    Problems,
    server_claims,
    server_problems,
    shared_namespace_problems,
    uniqueness_problems,
)

_FILE_TYPES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}


def read_config_text(path: Path | str, limit: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """The text of a config file, read so that no file can hang or exhaust the reader:
    a regular file only (after following symlinks: not a pipe, device or directory),
    opened without blocking, at most ``limit`` bytes."""
    file = str(path)
    try:
        before = os.stat(path)  # no open() at all of a device or a pipe
        if not stat.S_ISREG(before.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(before.st_mode), "not a regular file")
            raise refusal(file, f"refused: {kind}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise refusal(file, f"cannot read: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)  # replaced between the two looks: judge what was opened
        if not stat.S_ISREG(opened.st_mode):
            raise refusal(file, "refused: not a regular file")
        if opened.st_size > limit:
            raise refusal(file, f"refused: {opened.st_size} bytes, more than {limit} "
                                 "(settings.max_file_bytes)")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise refusal(file, f"refused: more than {limit} bytes "
                                     "(settings.max_file_bytes)")
    except OSError as exc:
        raise refusal(file, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refusal(file, f"not UTF-8 text: {exc.reason}", 1, 1) from None


class ParsedFile:
    """One file as read: the valid part of it, and what is wrong within it."""

    __slots__ = ("claims", "file", "issues", "located", "problems", "servers", "settings",
                 "text")

    def __init__(self, file: str, text: str, settings: Settings | None = None,
                 servers: dict[str, ServerConfig] | None = None,
                 issues: list[ConfigIssue] | None = None) -> None:
        self.file = file
        self.text = text
        self.settings = settings  # the main file's, when valid
        self.servers = {} if servers is None else servers
        self.issues = [] if issues is None else issues
        self.located: tuple[frozenset[FieldPath], SourceMap] | None = None  # positions()
        self.problems: tuple[Settings, Problems] | None = None  # server_problems, per settings
        self.claims: tuple[Settings, dict[str, Claims]] | None = None

    def positions(self, paths: Sequence[FieldPath]) -> SourceMap:
        """Where ``paths`` stand (kept while they are the ones asked for: each assemble
        asks again). Found in the text again rather than kept from the first read: a
        source map of every node of a large file would be kept as long as the file."""
        asked = frozenset(paths)
        if self.located is None or self.located[0] != asked:
            self.located = (asked, libyaml.locate(self.text, self.file, asked))
        return self.located[1]

    def server_claims(self, settings: Settings) -> dict[str, Claims]:
        if self.claims is None or not (self.claims[0] is settings or self.claims[0] == settings):
            self.claims = (settings, {name: server_claims(name, server, settings)
                                      for name, server in self.servers.items()})
        return self.claims[1]

    def server_problems(self, settings: Settings) -> Problems:
        if self.problems is None or not (self.problems[0] is settings
                                         or self.problems[0] == settings):
            found: Problems = []
            for name, server in self.servers.items():
                found.extend(server_problems(name, server, settings))
            self.problems = (settings, found)
        return self.problems[1]


def parse_file(text: str, file: str, *, main: bool,
               limit: int = DEFAULT_MAX_FILE_BYTES) -> ParsedFile:
    """Read one file: the main file (``version``, ``settings``, ``servers``) or a drop-in
    (``servers`` only). Never raises: what is wrong is in ``issues``."""
    try:
        data = plain_yaml.load(text)
    except plain_yaml.Declined:
        data = plain_yaml.Declined
    checked = None if data is plain_yaml.Declined else fast_file(data, main=main)
    if checked is not None:
        return ParsedFile(file, text, checked[0], checked[1])
    import yaml
    from pydantic import ValidationError

    from vsnetd.config import models

    try:
        if data is plain_yaml.Declined:
            data = libyaml.load(text, file, limit)
        if data is None and not main:
            return ParsedFile(file, text)  # an empty drop-in holds no servers
        settings, servers = models.validate(data, main)
        return ParsedFile(file, text, settings, servers)
    except ConfigError as exc:
        return ParsedFile(file, text, issues=exc.issues)
    except RecursionError:
        return ParsedFile(file, text, issues=[ConfigIssue(
            file, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels")])
    except (yaml.YAMLError, ValidationError, libyaml.DuplicateKey, libyaml.Unbuildable):
        pass  # read again below, to say where
    try:
        data, smap = libyaml.load_located(text, file, limit)
    except ConfigError as exc:
        return ParsedFile(file, text, issues=exc.issues)
    parsed = ParsedFile(file, text)
    try:
        parsed.settings, parsed.servers = models.validate(data, main)
    except ValidationError as exc:
        parsed.issues.extend(models.structure_issues(exc, smap))
        parsed.settings, parsed.servers = models.valid_part(data, main)
    return parsed


def drop_in_dir(path: Path | str) -> Path:
    """``/etc/vsnet/servers.d`` for ``/etc/vsnet/servers.yaml``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.d")


def is_drop_in(path: Path) -> bool:
    return path.suffix == ".yaml" and not path.name.startswith(".")


def drop_in_files(directory: Path) -> list[Path]:
    """The drop-ins of ``directory`` in name order (none where it does not exist); a
    directory that cannot be listed (its mode, its owner) is refused."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise refusal(str(directory), f"cannot read: {exc.strerror}") from None
    return sorted(directory / name for name in names if is_drop_in(Path(name)))


class _Unlocated(NamedTuple):
    """A problem :func:`assemble` found, before it is given its place in the file."""

    parsed: ParsedFile
    path: FieldPath
    message: str
    key: bool  # about the key (else the value)


def assemble(main: ParsedFile, drop_ins: Sequence[ParsedFile]) -> Config:
    """One config from the main file and the drop-ins (in name order); every issue of
    every file, and those between files, raised together."""
    settings = main.settings or Settings()
    # the issues, those found here still to be located (once all of a file's are known)
    found: list[ConfigIssue | _Unlocated] = [*main.issues]
    servers: dict[str, ServerConfig] = {}
    origin: dict[str, ParsedFile] = {}
    for parsed in (main, *drop_ins):
        if parsed is not main:
            found.extend(parsed.issues)
        for name, server in parsed.servers.items():
            first = origin.get(name)
            if first is not None:
                found.append(_Unlocated(parsed, ("servers", name),
                                        f"{name} is already defined in {first.file}", True))
                continue
            servers[name] = server
            origin[name] = parsed
    config = Config(version=1, settings=settings, servers=servers)
    claims: dict[str, Claims] = {}
    for parsed in (main, *drop_ins):
        claims.update(parsed.server_claims(settings))
    problems = uniqueness_problems(config, claims) + shared_namespace_problems(config)
    for parsed in (main, *drop_ins):
        problems.extend(p for p in parsed.server_problems(settings) if origin[str(p[0][1])]
                        is parsed)
    found.extend(_Unlocated(origin[str(path[1])], path, message, len(path) == 2)
                 for path, message in problems)
    asked: dict[int, list[FieldPath]] = {}
    for entry in found:
        if isinstance(entry, _Unlocated):
            asked.setdefault(id(entry.parsed), []).append(entry.path)
    issues = [entry if isinstance(entry, ConfigIssue) else entry.parsed.positions(
        asked[id(entry.parsed)]).issue(entry.path, entry.message, key=entry.key)
        for entry in found]
    if issues:
        order = {parsed.file: index for index, parsed in enumerate((main, *drop_ins))}
        raise ConfigError(sorted(issues, key=lambda i: (order.get(i.file, 0), i.line, i.column)))
    return config


def parse_config(text: str, file: str = "servers.yaml") -> Config:
    """Validate the text of one main file; raise :class:`ConfigError` with every issue.

    A valid plain file takes the fast path (the line reader, the hand checks, the
    semantic checks: ~40 µs per VS); anything else goes through libyaml and the pydantic
    models, and a file with problems is read again to say where each problem is: the
    whole document's positions for what the models refuse, the paths of the semantic
    problems only (:func:`libyaml.locate`) for those.
    """
    return assemble(parse_file(text, file, main=True), ())
