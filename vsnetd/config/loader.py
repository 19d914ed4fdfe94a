"""The main file and its drop-in directory read again and again, each file on its own: an
edit of one file costs that file; the result, and every error, is that of a full load.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vsnetd.config.files import (
    ParsedFile,
    assemble,
    drop_in_dir,
    drop_in_files,
    is_drop_in,
    parse_file,
    read_config_text,
)
from vsnetd.config.model import DEFAULT_CONFIG_PATH, DEFAULT_MAX_FILE_BYTES, Config, ConfigError
from vsnetd.config.semantics import Claims


class _Index:
    """What a valid config's VS hold, by owner: the cross-VS checks of one more VS, in
    constant time (:meth:`ConfigLoader._edit_in_place`)."""

    __slots__ = ("config", "ids", "marks", "moved_uplinks", "origin", "slots")

    def __init__(self, config: Config, origin: dict[str, ParsedFile]) -> None:
        self.config = config
        self.origin = origin
        self.ids: dict[int, str] = {}
        self.slots: dict[tuple[str, int, int], str] = {}
        self.marks: dict[int, str] = {}
        self.moved_uplinks: set[str] = set()  # uplinks handed whole to a VS (link: move)

    @classmethod
    def of(cls, config: Config, files: Sequence[ParsedFile]) -> _Index:
        origin: dict[str, ParsedFile] = {}
        for parsed in files:
            for name in parsed.servers:
                origin.setdefault(name, parsed)
        index = cls(config, origin)
        for name, server in config.servers.items():
            index.add(name, origin[name].server_claims(config.settings)[name])
            if server.mode == "netns" and server.link_type() == "move":
                index.moved_uplinks.add(server.uplink)
        return index

    def add(self, name: str, claims: Claims) -> None:
        server_id, slots, mark, _default = claims
        self.ids[server_id] = name
        for slot, _ip in slots:
            self.slots[slot] = name
        self.marks[mark] = name

    def remove(self, name: str, claims: Claims) -> None:
        server_id, slots, mark, _default = claims
        for table, key in ((self.ids, server_id), (self.marks, mark)):
            if table.get(key) == name:
                del table[key]
        for slot, _ip in slots:
            if self.slots.get(slot) == name:
                del self.slots[slot]

    def free(self, claims: Claims) -> bool:
        server_id, slots, mark, _default = claims
        return (server_id not in self.ids and mark not in self.marks
                and not any(slot in self.slots for slot, _ip in slots))


class ConfigLoader:
    """The main file and its drop-in directory, read again and again: each file on its
    own, so an edit of one file costs that file (the daemon: one VS of a thousand in its
    own drop-in file costs one VS). The result, and every error, is that of a full load.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.directory = drop_in_dir(self.path)
        self.limit = DEFAULT_MAX_FILE_BYTES
        self._main: ParsedFile | None = None
        self._drop_ins: dict[Path, ParsedFile] = {}
        self._order: list[Path] | None = None  # the drop-ins in name order, while unchanged
        self._index: _Index | None = None  # of the last load, when it was valid

    def concerns(self, path: Path) -> bool:
        return path == self.path or (path.parent == self.directory and is_drop_in(path))

    def forget(self) -> None:
        """Drop every file read so far (a read that failed half-way may have replaced
        some): the next :meth:`load` reads every file."""
        self._main, self._drop_ins, self._order, self._index = None, {}, None, None

    def load(self, changed: Iterable[Path] | None = None) -> Config:
        """Read the files in ``changed`` again (None: every file), then assemble."""
        replaced: list[tuple[ParsedFile | None, ParsedFile | None]] = []
        if changed is None or self._main is None:
            main = self._read(self.path, main=True)  # kept only with its drop-ins
            self._drop_ins = {path: self._read(path, main=False)
                              for path in drop_in_files(self.directory)}
            self._main, self._index = main, None
        else:
            for path in changed:
                if path == self.path:
                    self._main = self._read(path, main=True)
                    self._index = None
                elif self.concerns(path):
                    before = self._drop_ins.get(path)
                    if os.path.lexists(path):
                        self._drop_ins[path] = self._read(path, main=False)
                    else:
                        self._drop_ins.pop(path, None)
                    if (before is None) != (path not in self._drop_ins):
                        self._order = None
                    replaced.append((before, self._drop_ins.get(path)))
        if changed is None or self._order is None:
            self._order = sorted(self._drop_ins, key=str)
        config = self._edit_in_place(replaced) if self._index is not None else None
        if config is None:
            self._index = None
            files = [self._drop_ins[p] for p in self._order]
            config = assemble(self._main, files)
            self._index = _Index.of(config, [self._main, *files])
        self.limit = config.settings.max_file_bytes
        return config

    def _edit_in_place(self, replaced: list[tuple[ParsedFile | None, ParsedFile | None]]
                       ) -> Config | None:
        """The config after drop-ins of pbr VS were replaced, checked against the index
        of the last valid one; None when a full assemble must decide (a problem to
        locate, a netns VS, a name moving between files). With no conflict before and
        none found here, the full checks would find none either: they are symmetric."""
        index = self._index
        assert index is not None
        settings = index.config.settings
        gone: dict[str, Claims] = {}
        new: dict[str, tuple[ParsedFile, Claims]] = {}
        for before, after in replaced:
            for parsed in (before, after):
                if parsed is None:
                    continue
                if parsed.issues or any(server.mode != "pbr" for server in
                                        parsed.servers.values()):
                    return None
            if before is not None:
                if any(index.origin.get(name) is not before for name in before.servers):
                    return None
                gone.update(before.server_claims(settings))
            if after is not None:
                if after.server_problems(settings):
                    return None
                for name, claims in after.server_claims(settings).items():
                    if name in new or (name in index.origin and name not in gone):
                        return None
                    new[name] = (after, claims)
        if not gone and not new:
            return index.config
        servers = dict(index.config.servers)
        for name, claims in gone.items():
            index.remove(name, claims)
            del servers[name]
            del index.origin[name]
        fits = True
        for name, (parsed, claims) in new.items():
            if not index.free(claims) or parsed.servers[name].uplink in index.moved_uplinks:
                fits = False
                break
            index.add(name, claims)
            servers[name] = parsed.servers[name]
            index.origin[name] = parsed
        if not fits:
            return None  # the index is half-updated: the caller rebuilds it
        index.config = Config(version=1, settings=settings, servers=servers)
        return index.config

    def _read(self, path: Path, *, main: bool) -> ParsedFile:
        try:
            text = read_config_text(path, self.limit)
        except ConfigError as exc:
            return ParsedFile(str(path), "", issues=exc.issues)
        return parse_file(text, str(path), main=main, limit=self.limit)


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file and its drop-in directory; raise
    :class:`ConfigError` naming file and line."""
    return ConfigLoader(path).load()
