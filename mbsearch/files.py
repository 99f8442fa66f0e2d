"""Reading user files as data only: size limits, safe parsers, one-line validation errors."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pydantic
import yaml

from mbsearch.errors import BadInput

MAX_FILE_BYTES = 1_000_000  # space and arch files are a few KB; a larger one is a mistake


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a missing file, a folder, or a FIFO or device (reading one would block) with one line."""
    if path.is_dir():
        raise BadInput(f"{path} is a folder, not a {what} file")
    if path.exists() and not path.is_file():
        raise BadInput(f"{path} is not a regular file (a FIFO or a device); give a {what} file")
    if not path.is_file():
        raise BadInput(f"{what} file not found: {path}")


def read_text(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """Read a UTF-8 text file of at most `limit` bytes, refusing missing, huge or binary files with one line."""
    check_regular_file(path, what)
    size = path.stat().st_size
    if size > limit:
        raise BadInput(f"{path}: {what} file is {size:,} bytes, over the {limit:,} byte limit")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read {what} file: {exc}") from None


MAX_NESTING = 64  # spaces and archs nest four levels deep; 200k levels would exhaust the stack
MAX_INT_DIGITS = 30


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would let the last one win)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
            )
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _check_shape(text: str, source: str) -> None:
    """Refuse absurd nesting and huge integers before a parser recurses or converts them."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_NESTING:
        raise BadInput(f"{source}: nested {deepest} levels deep, over the limit of {MAX_NESTING}")
    if re.search(rf"\d{{{MAX_INT_DIGITS + 1},}}", text):
        raise BadInput(f"{source}: a number with more than {MAX_INT_DIGITS} digits; no setting needs one")


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML as plain data (safe_load: no object construction), refusing duplicate keys."""
    text = text.removeprefix("\ufeff")  # a byte-order mark from some editors is not content
    _check_shape(text, source)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise BadInput(f"{source}:{where}: YAML syntax error: {problem}") from None


def parse_json(text: str, source: str) -> Any:
    """Parse JSON, reporting the line of a syntax error."""
    text = text.removeprefix("\ufeff")
    _check_shape(text, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}") from None


def describe_validation_error(error: pydantic.ValidationError, source: str) -> str:
    """Turn pydantic's report into one line: source, the key path and what is allowed."""
    # An unknown key is usually a typo of a missing one: name it first.
    first = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "missing required key"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {path or '<top level>'}: {message}{suffix}"


# The one rule for every command that writes: never overwrite an input, a database (a study's storage) or
# another command's outputs; refuse before any work, with one line. A file may be replaced only by the
# command that wrote it (its kind is recognised by content), so rerunning a command with the same output
# works, and nothing else is lost.
_SQLITE_MAGIC = b"SQLite format 3\x00"
OutputKind = str  # "json:PREFIX" (a JSON object whose "format" starts with PREFIX), "onnx", "text" or "any"


def _is_kind(path: Path, kind: OutputKind) -> bool:
    """Whether the existing file `path` looks like an earlier output of this kind."""
    try:
        with path.open("rb") as handle:
            head = handle.read(min(path.stat().st_size, MAX_FILE_BYTES))
    except OSError:
        return False
    if not head or kind == "any":
        return True  # an empty file holds nothing to lose
    if kind == "onnx":
        return head[:1] == b"\x08"  # ModelProto starts with field 1 (ir_version) as a varint
    if kind.startswith("json:"):
        try:
            data = json.loads(head)
        except ValueError:
            return False
        return isinstance(data, dict) and str(data.get("format", "")).startswith(kind.removeprefix("json:"))
    return False


def _describe_input(path: Path, inputs: dict[str, Path | None]) -> str | None:
    resolved = path.resolve()
    for what, given in inputs.items():
        if given is not None and given.exists() and resolved == given.resolve():
            return what
    return None


def check_outputs(
    outputs: dict[str, Path | None],
    protected: dict[str, Path] | None = None,
    inputs: dict[str, Path | None] | None = None,
    kinds: dict[str, OutputKind] | None = None,
) -> None:
    """Refuse, before anything is written, an output that is a folder, sits in a folder that cannot be
    written, names the same file twice, is one of the command's `inputs`, a `protected` file (the study's
    database), any SQLite database, or an existing file that is not an earlier output of its kind."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = path.resolve()
        if path.is_dir():
            raise BadInput(f"{flag} {path} is a folder; give a file name, e.g. {path / 'best.json'}")
        if resolved in seen:
            raise BadInput(f"{flag} and {seen[resolved]} both name {path}; give two different files")
        for what, guarded in (protected or {}).items():
            if guarded.exists() and resolved == guarded.resolve():
                raise BadInput(f"{flag} {path} is {what}; writing there would destroy it, pick another file")
        what = _describe_input(path, inputs or {})
        if what is not None:
            raise BadInput(f"{flag} {path} is {what}, which this command reads; pick another output file")
        if path.is_file():
            _refuse_foreign(flag, path, (kinds or {}).get(flag, "any"))
        folder = resolved.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK) or str(folder).startswith("/proc"):
            raise BadInput(f"{flag} {path}: cannot write in {folder}; pick a writable folder")
        seen[resolved] = flag


def _refuse_foreign(flag: str, path: Path, kind: OutputKind) -> None:
    if _is_sqlite(path):
        raise BadInput(f"{flag} {path} is a SQLite database (a study's storage?); pick another output file")
    if not _is_kind(path, kind):
        raise BadInput(
            f"{flag} {path} exists and is not an earlier output of this command; pick another file or remove it"
        )


def check_output_folder(
    flag: str, folder: Path, writes: tuple[str, ...], marker: str, inputs: dict[str, Path | None]
) -> None:
    """Refuse an output folder that holds one of the command's inputs, a database, or files of the names
    this command `writes` that another command left (no `marker` of ours beside them)."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{flag} {folder} is a file; give a folder")
    for name in writes:
        what = _describe_input(folder / name, inputs)
        if what is not None:
            raise BadInput(
                f"{flag} {folder}: writing {name} there would overwrite {what}, which this command reads; "
                "pick another output folder"
            )
    if not folder.is_dir():
        return
    database = _database_in(folder)
    if database is not None:
        raise BadInput(
            f"{flag} {folder} holds {database.name}, a SQLite database (a study's storage?); pick another output folder"
        )
    if (folder / marker).exists():
        return
    foreign = sorted(name for name in writes if (folder / name).exists())
    if foreign:
        raise BadInput(f"{flag} {folder} holds {', '.join(foreign)} from another command; pick another output folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {folder}: cannot write there; pick a writable folder")


def _database_in(folder: Path, most: int = 10_000) -> Path | None:
    """A SQLite database among the folder's files (its first `most` entries: a folder of a million images
    is not read through), or None."""
    try:
        for index, entry in enumerate(os.scandir(folder)):
            if index >= most:
                break
            if entry.is_file(follow_symlinks=False) and _is_sqlite(Path(entry.path)):
                return Path(entry.path)
    except OSError:
        return None
    return None


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(
            fd, "wb" if isinstance(text, bytes) else "w", **({} if isinstance(text, bytes) else {"encoding": "utf-8"})
        ) as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
