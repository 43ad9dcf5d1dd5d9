"""Writing files so that a crash never leaves half of one under the real name."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from seedbed.contained import free_space
from seedbed.errors import SeedbedError


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a unique temporary name beside `path`, fsync, rename over `path`, fsync the folder.

    Readers see the old file or the new one, never a mixture; leftovers end in `.tmp`.
    A full disk is a one-line SeedbedError naming the file, the bytes needed and the space free.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as err:
        _raise_if_full(err, path, len(data))
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            _raise_if_full(err, path, len(data))
        raise
    fsync_dir(path.parent)


def _raise_if_full(err: OSError, path: Path, needed: int) -> None:
    """A full disk (or quota) as a SeedbedError that says which file, how much it needs and how much is free."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    raise SeedbedError(
        f"cannot write '{path}': no space left on its disk ({needed / 2**20:,.1f} MiB needed, {free_space(path.parent)} free): "
        "free some space and try again (a growing run continues with seedbed grow --resume)"
    ) from None


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable, not just the files' bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
