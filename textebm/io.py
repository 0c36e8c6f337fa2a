"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A reader (or a resumed run after SIGKILL) sees either the old file or the new one, never half of one.
A symlink is followed: the file it points to is replaced, and the link stays. For `atomic_write`, a
target that exists and is neither a regular file nor a folder (a device such as /dev/null, a FIFO)
is a stream, not a file to replace: it is written through.
(And the one conversion every JSON report needs before it is written: `json_safe`.)
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from textebm.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_temporary(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """`path`'s new content, whole and on disk, under a temporary name beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; the result should read like any other
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _destination(path: Path) -> tuple[Path, bool]:
    """Where `path`'s content goes, and whether it is a stream to write through (it exists, and is neither
    a regular file nor a folder). A file's symlinks are followed, since renaming over a link would replace
    the link; a stream is opened by the path given (/dev/stdout's link names no file when it is a pipe)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there yet (or under a file: the write says so)
        mode = stat.S_IFREG
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return Path(os.path.realpath(path)), False
    return Path(path), True


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path, stream = _destination(path)
    if stream:
        with open(path, "wb") as handle:
            write(handle)
        return
    tmp = _write_temporary(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: Path, folder: bool = False) -> Path:
    """`path`, after checking that a command can write it there (a file; with `folder`, a folder to create
    or fill), before the command computes what goes there: a bad output path then costs no work.
    Otherwise a UserError "cannot write PATH: reason" (a folder where a file goes or the reverse, a file
    where a folder goes, a folder that cannot be created or written)."""
    target, stream = _destination(path)
    if stream and not folder:
        return Path(path)
    if folder and target.is_symlink() and not target.exists():  # a link to nothing, or to itself: no mkdir
        raise UserError(f"cannot write {path}: it is a link to {os.readlink(target)}, which does not resolve")
    if target.exists() and target.is_dir() != folder:
        raise UserError(f"cannot write {path}: {'it is not a folder' if folder else 'it is a folder'}")
    existing = target if folder else target.parent
    while not existing.exists():  # folders the write will create: it needs the first one that is there
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is not a folder")
    try:  # the one sure test (root passes any permission check, /proc refuses new files)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".textebm-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    return Path(path)


def atomic_write_files(files: list[tuple[Path, bytes]]) -> None:
    """Several files that belong together (a checkpoint's weights and training state): every one is
    written whole before the first is renamed into place, then they are renamed in the order given.
    A process killed while writing leaves all the old files; a kill between two renames leaves the
    first files new and the later ones old, which their writer must let its reader recover from
    (textebm.model.checkpoints keeps the weights it replaces until its last rename)."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path = _destination(path)[0]
            written.append((_write_temporary(path, lambda handle, data=data: handle.write(data)), path))
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when the file is missing, unreadable or holds no object
    (the markers and ledgers of long jobs: a half-written or absent one means "not done")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_stale_temp_files(folder: Path) -> None:
    """Temporary files left by a process killed mid-write (their targets are intact)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def json_safe(x):
    """JSON has no infinity or NaN: such values (never expected) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
