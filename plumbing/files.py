"""Reading files with messages that name them, and the one atomic write of the tool."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


class DataError(Exception):
    """A dataset file or folder is missing, unreadable or inconsistent (the message names it)."""


def read_bytes(path: Path) -> np.ndarray:
    """Whole file as uint8 (np.fromfile copes with non-ASCII paths, unlike cv2.imread)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"{path}: zero-byte file")
    return data


def read_json(path: Path, what: str):
    """Parsed JSON; DataError naming the file and, for bad JSON, the line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        why = f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        raise DataError(f"{path}: not a readable {what}: {why}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a readable {what}: not UTF-8 text") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file (list files, YOLO labels); undecodable bytes kept as
    os.fsdecode keeps them, so a listed non-UTF-8 file name still finds its file."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_part(path: str | Path, write: Callable[[BinaryIO], object], sync: bool = True) -> Path:
    """`write(f)` into a new PATH.*.part file beside `path`, opened for binary writing and
    reading (a writer may check what it wrote; a unique name: parallel writers do not collide),
    on disk when this returns (sync), removed again if writing fails. os.replace(part, path)
    then puts it in place. The part file gets the umask's permissions, not mkstemp's 0600,
    which would hide a model from the group."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object], sync: bool = True) -> Path:
    """`path` written whole or not at all (write_part, then a rename): an error, a kill or a
    stop leaves the previous file as it was."""
    os.replace(write_part(path, write, sync), path)
    return Path(path)
