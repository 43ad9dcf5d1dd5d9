"""Following paths inside a run folder that may have come from someone else.

A run folder travels ("zip it, move it, open it elsewhere"), so whatever it holds is
untrusted: a path recorded in run.sqlite, a symbolic link, a FIFO where a checkpoint
should be. The rule, kept here in one place:

- every path taken from a run folder resolves inside it (no absolute path, no `..`,
  no symbolic link on the way);
- only regular files are opened, never following a link, never blocking on a FIFO;
- a file's size is checked before it is read into memory;
- nothing outside the folder is renamed or deleted (work through a folder's file
  descriptor, so a link swapped in meanwhile is not followed either).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from seedbed.errors import SeedbedError

GiB = 2**30
JSON_MAX_BYTES = 256 * 2**20  # a tokenizer or a trial result is megabytes, never this


class Unsafe(SeedbedError):
    """A path from a run folder that leads outside it, or to something that is not a regular file."""


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, refused if `relative` could lead out of `root` (absolute, `..`, a symbolic link on the way)."""
    if not isinstance(relative, str):  # SQLite keeps whatever type was stored
        raise Unsafe(f"{relative!r} is not a path inside the run folder")
    rel = PurePosixPath(relative)
    if not rel.parts or "\x00" in relative or rel.is_absolute() or any(p in ("..", ".") for p in rel.parts):
        raise Unsafe(f"{relative!r} is not a path inside the run folder")
    path = Path(root)
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise Unsafe(f"{relative!r} goes through a symbolic link")
    return path


def check_kind(path: Path, want: str) -> None:
    """Refuse `path` if it exists and is a link or not a `want` ("file" or "dir"); a missing path passes."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    ok = stat.S_ISREG(mode) if want == "file" else stat.S_ISDIR(mode)
    if not ok:
        what = "a symbolic link" if stat.S_ISLNK(mode) else f"not a regular {'file' if want == 'file' else 'folder'}"
        raise Unsafe(f"'{path}' is {what}: a run folder holds only its own files and folders; copy it without links")


def open_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, never following a link or waiting on a FIFO, refused past `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP or _is_link(path):
            raise Unsafe(f"'{path}' is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"'{path}' is not a regular file")
        if st.st_size > max_bytes:
            raise Unsafe(f"'{path}' is {st.st_size / GiB:.1f} GiB, more than the {max_bytes / GiB:.1f} GiB it may be")
        chunks, left = [], max_bytes + 1  # a file growing while read still stops at the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise Unsafe(f"'{path}' grew past the {max_bytes / GiB:.1f} GiB it may be while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: Path, fix: str, max_bytes: int | None = None) -> Any:
    """A JSON file from an untrusted folder: a regular file within `max_bytes` (JSON_MAX_BYTES by default), parsed.

    Anything else is one line naming the file, what is wrong with it, and `fix`, what to do about it.
    """
    try:
        return json.loads(open_regular(path, JSON_MAX_BYTES if max_bytes is None else max_bytes))
    except Unsafe as err:
        raise SeedbedError(f"{err}: {fix}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SeedbedError(f"'{path}' is not valid JSON ({err}): {fix}") from None


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


@contextmanager
def folder(root: Path, sub: str) -> Iterator[int]:
    """A file descriptor of the real folder `root/sub` (not a link), for renaming and deleting inside it only."""
    path = inside(root, sub)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except NotADirectoryError:
        raise Unsafe(f"'{path}' is not a folder") from None
    except OSError as err:
        if err.errno == errno.ELOOP or _is_link(path):
            raise Unsafe(f"'{path}' is a symbolic link") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def is_regular_in(dir_fd: int, name: str) -> bool:
    """Whether `name` in the folder `dir_fd` is a regular file (a link is not)."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def is_dir_in(dir_fd: int, name: str) -> bool:
    """Whether `name` in the folder `dir_fd` is a real folder (a link to one is not)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def remove_tree(parent: Path, name: str) -> None:
    """Delete the real folder `parent/name` and everything in it; links inside are removed, never followed."""
    path = inside(parent, name)
    if not os.path.lexists(path):
        return
    check_kind(path, "dir")
    shutil.rmtree(path)  # fd-based where the platform allows: refuses a link at the top, unlinks links below


def free_space(path: Path) -> str:
    """The free space on `path`'s disk, for an error message ("1.2 GiB")."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown"
    return f"{free / GiB:.1f} GiB" if free >= GiB / 10 else f"{free / 2**20:.1f} MiB"
