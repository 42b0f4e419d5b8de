"""The output-folder contract every command that writes follows.

- **Names read from files are names.** :func:`check_name` accepts a string of letters, digits and
  ``. _ + - :`` (no separator, not ``.`` or ``..``, at most 128 characters); :func:`child` joins
  one to a folder and checks that the result stays inside it (resolve, then compare).
- **A folder is poisonlab's when its manifest says so.** ``.poisonlab-output.json`` lists the
  entries poisonlab wrote there and a random marker for its temporary names
  (:mod:`poisonlab.utils.tempname`). :func:`claim_output` refuses a non-empty folder without a
  manifest unless ``force``; even with ``force`` it refuses to replace an entry poisonlab did not
  write (the user's ``plan.json`` stays theirs).
- **Never through a symlink.** Outputs are written to a temporary name and renamed (a symlink in
  the way is replaced, never followed); files that are appended to or locked are opened with
  ``O_NOFOLLOW`` (:func:`open_nofollow`).
- **Only poisonlab's own leftovers are swept**: temporary entries with the folder's marker that no
  live process holds (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from poisonlab.errors import InputError
from poisonlab.utils.io import write_json
from poisonlab.utils.tempname import MANIFEST, MARKER, manifest_body, own_temp

log = logging.getLogger(__name__)
NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._+:-]{1,128}$")


def check_name(value: Any, field: str, where: str | os.PathLike[str]) -> str:
    """``value`` if it is a name (see the module docstring); ``InputError`` naming ``where`` and ``field``."""
    if not isinstance(value, str) or not NAME.match(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InputError(f"{where}: {field} must be a name (letters, digits, . _ + - :, no path), got {shown}")
    return value


def child(folder: str | os.PathLike[str], name: Any, field: str, where: str | os.PathLike[str]) -> Path:
    """``folder / name`` for a ``name`` read from a file: checked as a name, and the joined path,
    resolved, checked to be that name inside ``folder`` resolved (a symlink out is refused)."""
    folder = Path(folder)
    path = folder / check_name(name, field, where)
    if os.path.realpath(path) != os.path.join(os.path.realpath(folder), name):
        raise InputError(f"{where}: {field} {name!r} leads outside {folder}")
    return path


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symlink at ``path`` (``O_NOFOLLOW``) with one line."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        if err.errno == 40 or os.path.islink(path):  # ELOOP
            raise InputError(f"{path} is a symlink: poisonlab never writes through one; remove it") from None
        raise


def read_manifest(folder: Path) -> tuple[list[str], str | None] | None:
    """The entries and marker of ``folder``'s manifest; ``None`` without one.

    Raises:
        InputError: the manifest is a symlink, not JSON, or lists something that is not a name.
    """
    body = manifest_body(folder)
    if body is None:
        return None
    where = folder / MANIFEST
    if not body:
        raise InputError(f"{where}: not a poisonlab output manifest (a regular file of JSON); remove it")
    entries = body.get("entries", [])
    if not isinstance(entries, list):
        raise InputError(f"{where}: entries must be a list of names")
    names = [check_name(e, "entries", where) for e in entries]
    marker = body.get("marker")
    if marker is not None and not (isinstance(marker, str) and MARKER.match(marker)):
        raise InputError(f"{where}: marker must be 16 hex digits")
    return [n for n in names if n != MANIFEST], marker


def claim_output(folder: str | os.PathLike[str], names: Iterable[str], *, force: bool = False,
                 legacy: Iterable[str] = (), inputs: Iterable[str | os.PathLike[str] | None] = ()) -> str:
    """Make ``folder`` a poisonlab output folder that may receive ``names``; returns its marker.

    A missing or empty folder is created and claimed. A folder with a manifest is poisonlab's. A
    non-empty folder without one is refused unless every name of ``legacy`` is a regular file in it
    (a folder an older poisonlab wrote) or ``force``. Any of ``names`` present there that the
    manifest does not list is refused, ``force`` or not. Temporary entries that killed runs left
    (with the folder's marker) are swept. ``inputs`` are the files the command reads (a checkpoint,
    a plan, a CSV): one that is among the entries it would replace is refused, since the run would
    overwrite what it reads (``clean --model runs/x/model.safetensors --out runs/x``).

    Raises:
        InputError: ``folder`` is a file, a symlink stands where it would be created, the manifest
            is malformed, or the folder (or one of ``names`` in it) is someone else's.
    """
    folder = Path(folder)
    names = [check_name(n, "output name", "poisonlab") for n in names]
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file, not a folder")
    if folder.is_symlink() and not folder.exists():
        raise InputError(f"--out {folder} is a dangling symlink")
    folder.mkdir(parents=True, exist_ok=True)
    found = read_manifest(folder)
    present = sorted(os.listdir(folder))
    legacy = list(legacy)
    if found is not None:
        owned, marker = found
    elif legacy and all(_regular(folder / n) for n in legacy):
        owned, marker = [n for n in present if n in {*names, *legacy}], None
    elif present and not force:
        raise InputError(f"--out {folder} is a non-empty folder that poisonlab did not write; choose a new "
                         "folder, or pass --force (only poisonlab's own files are replaced there)")
    else:
        owned, marker = [], None
    links = [n for n in names if (folder / n).is_symlink()]
    if links:
        raise InputError(f"{folder / links[0]} is a symlink: poisonlab never writes through one; remove it")
    for given in inputs:
        if given is None or not os.path.isfile(given):
            continue
        for name in names:
            target = folder / name
            if target.is_file() and os.path.samefile(given, target):
                raise InputError(f"--out {folder} holds {name}, which this command reads ({given}): it would be "
                                 "overwritten; choose another --out")
    theirs = [n for n in names if n in present and n not in owned]
    if theirs:
        raise InputError(f"{folder / theirs[0]} exists and poisonlab did not write it; move it away or choose "
                         "another --out (poisonlab never replaces a file it did not write)")
    marker = marker or secrets.token_hex(8)
    write_json(folder / MANIFEST, {"entries": sorted({*owned, *names}), "marker": marker})
    sweep(folder, marker)
    return marker


def _regular(path: Path) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISREG(os.lstat(path).st_mode)
    return False


def sweep(folder: str | os.PathLike[str], marker: str) -> None:
    """Remove the temporary entries in ``folder`` that carry ``marker`` and that no live process
    holds (their writers keep an ``flock`` on them until they rename)."""
    folder = Path(folder)
    for entry in os.scandir(folder):
        if not own_temp(entry.name, marker):
            continue
        path = folder / entry.name
        if entry.is_symlink():
            path.unlink()
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            log.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True) if entry.is_dir(follow_symlinks=False) else path.unlink()
        finally:
            os.close(fd)


def hold(path: str | os.PathLike[str]) -> int:
    """An open descriptor holding an exclusive ``flock`` on ``path``: the mark of a live writer
    (the operating system drops it when the process dies, ``kill -9`` included)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], names: Iterable[str], force: bool = False,
               inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Iterator[Path]:
    """Stage a command's outputs, then put them into ``path`` without touching what poisonlab did
    not write there.

    ``path`` is claimed for ``names`` (:func:`claim_output`) and a temporary folder inside it is
    yielded. On success each entry written there replaces poisonlab's entry of the same name,
    entries an earlier poisonlab run wrote that this run no longer writes are removed, and the
    manifest lists what is now poisonlab's; every other entry of ``path`` stays.

    Raises:
        InputError: as :func:`claim_output`, or the body wrote a name outside ``names``.
    """
    path = Path(path)
    names = list(names)
    marker = claim_output(path, names, force=force, inputs=inputs)
    owned = (read_manifest(path) or ([], None))[0]
    tmp = Path(tempfile.mkdtemp(prefix=f".stage.{marker}.", suffix=".tmp", dir=path))
    held = hold(tmp)
    try:
        yield tmp
        written = sorted(os.listdir(tmp))
        stray = [n for n in written if n not in names]
        if stray:
            raise InputError(f"poisonlab wrote {stray[0]!r}, which is not among its output names")
        for name in sorted(set(owned) & set(names) - set(written)):
            remove_own(path / name)
        for name in written:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                remove_own(target)
            os.replace(tmp / name, target)
        write_json(path / MANIFEST, {"entries": sorted(set(owned) - set(names) | set(written)), "marker": marker})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(held)


def remove_own(target: Path) -> None:
    """Remove one entry poisonlab wrote (a folder is first moved aside, so no half-deleted state;
    a symlink is removed as a link, never followed)."""
    if target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never through a symlink) for the
    body; waits for other holders. The operating system drops the lock when its process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked DataLoader worker shares the descriptor
        os.close(fd)


LOCK_NAME = ".poisonlab.lock"
TRAIN_OUTPUTS = ("model.safetensors", "model.json", "train_state.pt", "metrics.jsonl", LOCK_NAME)
"""What a training run writes into its folder (:class:`~poisonlab.train.loop.Trainer`)."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], force: bool = False) -> Iterator[None]:
    """Claim ``folder`` for a training run's outputs (:func:`claim_output`, which also sweeps a
    killed run's temporary files) and hold ``folder/.poisonlab.lock`` for one writer at a time.

    Raises:
        InputError: the folder is someone else's (see :func:`claim_output`), or another process
            holds the lock (its pid is named); the lock of a dead process is free.
    """
    folder = Path(folder)
    claim_output(folder, TRAIN_OUTPUTS, force=force, legacy=(LOCK_NAME, "train_state.pt"))
    fd = open_nofollow(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{folder} is in use by another poisonlab run (pid {other}); wait for it or use "
                             "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked DataLoader worker shares the descriptor
    finally:
        os.close(fd)


def claim(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` if no one has: True for the one caller that created it, False for every other
    (``O_EXCL`` never follows a symlink)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
