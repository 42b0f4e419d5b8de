"""Atomic file output: write to a temporary name next to the target, then rename.

An interrupted run therefore never leaves a half-written file or folder behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from poisonlab.errors import InputError

log = logging.getLogger(__name__)
LOCK_NAME = ".poisonlab.lock"


def _umask() -> int:
    """The process umask (temporary files are created 0600/0700; outputs get normal modes)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    Example:
        >>> with atomic_write("out.json", "w") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


OUTPUT_MANIFEST = ".poisonlab-output.json"


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], force: bool = False, legacy: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a command's output folder without touching what poisonlab did not write there.

    Yields a temporary folder beside ``path``. On success each entry written there replaces the
    entry of the same name in ``path``, entries of an earlier poisonlab run that this run no
    longer writes are removed, and a manifest (``.poisonlab-output.json``) lists what is
    poisonlab's; every other file in ``path`` stays. A non-empty ``path`` that is not a
    poisonlab output (no manifest, none of the ``legacy`` names) is refused unless ``force``.

    Raises:
        InputError: ``path`` is a file, or a folder of someone else's files without ``force``.
    """

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file, not a folder")
    manifest = path / OUTPUT_MANIFEST
    owned: list[str] = []
    if manifest.is_file():
        with contextlib.suppress(ValueError, TypeError):
            owned = [str(n) for n in json.loads(manifest.read_text()).get("entries", [])]
    elif path.is_dir() and any(path.iterdir()):
        owned = [n for n in legacy if (path / n).exists()]
        if not owned and not force:
            raise InputError(f"--out {path} is a non-empty folder that poisonlab did not write; choose a new "
                             "folder, or pass --force (only poisonlab's own files are replaced there)")
    path.mkdir(parents=True, exist_ok=True)
    _clear_stale_beside(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    held = _hold(tmp)
    try:
        yield tmp
        written = sorted(e.name for e in tmp.iterdir())
        for name in sorted(set(owned) - set(written) - {OUTPUT_MANIFEST}):
            _remove(path / name)
        for name in written:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                _remove(target)
            os.replace(tmp / name, target)
        write_json(manifest, {"entries": written})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(held)


def _hold(folder: Path) -> int:
    """An open descriptor holding an exclusive ``flock`` on ``folder``: the mark of a live writer
    (the operating system drops it when the process dies, ``kill -9`` included)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _clear_stale_beside(path: Path) -> None:
    """Remove the temp folders (``.NAME.XXXXXXXX.tmp`` beside ``path``) of killed runs for ``path``;
    one a live run still holds is left alone."""
    import fcntl

    for entry in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not (entry.is_dir() and TEMP_NAME.match(entry.name)):
            continue
        fd = os.open(entry, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            log.info("removing %s, left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(fd)


def _remove(target: Path) -> None:
    """Remove one entry poisonlab wrote (a folder is first moved aside, so no half-deleted state)."""
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def load_tensors(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary
    Python objects. A file that needs more is refused with one line that says why; any other
    unreadable file is one line too (``InputError`` both).
    """
    import pickle
    import warnings

    import torch


    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{what} {path} refused for safety: it holds Python objects beyond tensors, and "
                         "poisonlab loads pickled files only as tensors (weights_only); convert it to "
                         "safetensors where it was made") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read {what} {path} (truncated or not a {what}?): {msg[:200]}") from None


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as canonical JSON, atomically."""
    with atomic_write(path, "w") as f:
        f.write(dumps_json(obj))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the body; waits for other holders.

    The operating system drops the lock when its process dies, so an interrupted run never leaves
    a stale lock behind.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def claim(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` if no one has: True for the one caller that created it, False for every other."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what atomic_write / atomic_dir / output_dir create


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``folder/.poisonlab.lock`` for one writer at a time, and clear the folder of the temp
    files a killed run of poisonlab left (names ``.NAME.XXXXXXXX.tmp``; nothing else is touched).

    Raises:
        InputError: another process holds the lock (its pid is named); the lock of a dead process
            is free, since the operating system drops it.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            other = f.read().strip() or "unknown"
            raise InputError(f"{folder} is in use by another poisonlab run (pid {other}); wait for it or use "
                             "another --out") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            for entry in folder.iterdir():
                if TEMP_NAME.match(entry.name):
                    log.info("removing %s, left by an interrupted run", entry)
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
