"""Run an experiment's classifier, SSL and text jobs in a second process beside the CLIP grid.

The second process works through the section jobs from the first; the main process, once its
CLIP grid is done, takes the rest from the last, so neither waits idle while the other has work.
The two share the cache folder (a lock per stage: a stage is built once) and the results store
(SQLite serialises the two writers). On the tiny CPU models a training step is too small to keep
two threads busy, so two one-thread processes get more done than one two-thread process
(docs/results/performance.md, "Where the demo's time goes on 2 CPU cores"). Both processes keep the same number of intra-op threads for the whole
run: a stage's numerics depend on its thread count, so they must not depend on which process runs
it (same seed, same result).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from poisonlab.errors import InputError

Job = tuple[str, Callable[[], object]]
"""A named unit of section work; every job computes the same numbers whichever process runs it."""
log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr: poisonlab's at ``level``, other libraries' warnings only."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("poisonlab").setLevel(level)


def _worker(work: Callable[[], object], threads: int, level: int, errors: Any) -> None:
    """Child process: ``work`` (the unclaimed section jobs) with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    configure_logging(level)
    try:
        work()
    except InputError as err:
        errors.put(str(err))
        raise SystemExit(2) from None


@contextlib.contextmanager
def sections_beside(work: Callable[[], object]) -> Iterator[None]:
    """Run ``work`` (picklable: a module-level function or a partial of one) in a child process
    while the body runs; each gets half the threads.

    Raises:
        InputError: the sections stopped on bad input (the child's message).
        RuntimeError: the child failed otherwise (its traceback is on stderr).
    """
    total = torch.get_num_threads()
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    level = logging.getLogger("poisonlab").getEffectiveLevel()
    child = ctx.Process(target=_worker, args=(work, total // 2, level, errors),
                        name="poisonlab-sections")
    child.start()
    log.info("section jobs start in process %d; %d of %d threads each", child.pid, total // 2, total)
    torch.set_num_threads(total // 2)
    try:
        yield
    except BaseException:
        child.terminate()
        raise
    finally:
        child.join()
        torch.set_num_threads(total)
    if child.exitcode == 2 and not errors.empty():
        raise InputError(errors.get())
    if child.exitcode != 0:
        raise RuntimeError(f"the section process failed (exit code {child.exitcode}); see its traceback above")
