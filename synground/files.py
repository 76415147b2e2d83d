"""Writing files whole or not at all: into a temporary file in the destination's own directory, flushed to disk, then
renamed over the destination. A rename within one filesystem is atomic, so a crash or a full disk leaves either the
old file or the new one, never a truncated file under the final name (a temporary directory elsewhere, e.g. /tmp on
another filesystem, would make the final step a copy, which can be cut short)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """`with atomic_file(path) as f: f.write(...)`: `path` appears, complete, only when the block ends without an
    error; otherwise it keeps its former content (or stays absent) and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` whole or not at all."""
    with atomic_file(path) as file:
        file.write(data.encode() if isinstance(data, str) else data)


def save_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Let `write(file)` fill `path` whole or not at all, e.g. `save_atomic(p, lambda f: torch.save(obj, f))`."""
    with atomic_file(path) as file:
        write(file)


def sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
