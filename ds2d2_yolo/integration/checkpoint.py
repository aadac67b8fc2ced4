"""Checkpoint files written so that no interruption leaves a half file: temporary file, fsync, rename."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

# Held while a file is written: Ctrl-C raises KeyboardInterrupt wherever it lands (even between creating the temporary
# file and the `try` that removes it), and SIGTERM's default action ends the process without running any cleanup.
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (SIGTERM first), so a write is never cut.

    Python runs signal handlers in the main thread only, so in other threads this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for s in DEFERRED_SIGNALS:
            previous[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in sorted(set(pending), key=lambda s: s != signal.SIGTERM):  # a stop request beats an interrupt
            signal.raise_signal(s)


def _file_mode() -> int:
    """The mode `open()` gives a new file (0o666 less the umask): what Ultralytics' checkpoints get, 0644 usually."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Any:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it over `path`; return what it returns.

    SIGINT and SIGTERM wait until the file is in place (`signals_deferred`), so an interrupted run leaves either the
    previous file or the new one, never a half file or a stray temporary one. A crash inside `write` removes the
    temporary file and leaves `path` as it was; only SIGKILL or a power cut can leave a hidden `.<name>.*.tmp`.

    Args:
        path (str | Path): The file to write.
        write (Callable[[Path], Any]): Writes the whole content to the path it is given.

    Returns:
        (Any): The return value of `write`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            os.close(fd)
            os.chmod(tmp, _file_mode())  # mkstemp creates 0600
            out = write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename (`atomic_write`): never a half file."""
    # Save by path, not into an open file: Ultralytics replaces torch.save with a version that retries after a
    # RuntimeError, and each retry must start from an empty file instead of appending to the failed attempt.
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
