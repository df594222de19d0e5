"""Replacing a user's file atomically: temp file, fsync, rename, mode and symlinks kept.

Target files, the edited lines.yaml, the service unit and the HTML report all
go through it, so it sits below every one of them.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
import time
from pathlib import Path

from .errors import TargetError

NEW_FILE_MODE = 0o600


def atomic_write(path: Path, data: bytes) -> None:
    """Replace a file so that a crash at any moment leaves either the old or the new content.

    Writes through a symlink to its target, so dotfile managers keep their links.
    """
    real = Path(os.path.realpath(path))
    try:
        info = real.stat()
        mode = stat.S_IMODE(info.st_mode)
    except FileNotFoundError:
        info = None
        mode = NEW_FILE_MODE
    except OSError as exc:  # a parent that is a file, a symlink loop: this target fails, the others go on
        raise TargetError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    except OSError as exc:
        raise TargetError(f"{path}: cannot write: {exc.strerror or exc}") from None
    _remove_stale_temp_files(real)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if info is not None and hasattr(os, "fchown"):
                try:
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
                except PermissionError:
                    pass
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, real)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise TargetError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(real.parent)


STALE_TEMP_S = 60.0  # a live writer keeps its temp file for milliseconds


def _remove_stale_temp_files(real: Path) -> None:
    """A writer killed mid-write leaves its temp file behind; the next write of that file clears it.

    Only temp files older than a minute go, so a concurrent writer's file is never pulled from under it.
    """
    cutoff = time.time() - STALE_TEMP_S
    for leftover in real.parent.glob(f".{glob.escape(real.name)}.*.tmp"):
        try:
            if leftover.lstat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:
            pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
