"""Run an experiment's jobs in two processes: a second one beside the main one.

The second process works through the jobs from the first (the studies' longest chains); the main
process takes them from the last (the CLIP grid's), so neither waits idle while the other has work.
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
"""A named unit of a study's work; every job computes the same numbers whichever process runs it."""
log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Timestamped lines on stderr: poisonlab's at ``level``, other libraries' warnings only."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("poisonlab").setLevel(level)


def _worker(work: Callable[[], object], threads: int, level: int, errors: Any) -> None:
    """Child process: ``work`` (the unclaimed jobs) with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    configure_logging(level)
    try:
        work()
    except InputError as err:
        errors.put(str(err))
        raise SystemExit(2) from None


@contextlib.contextmanager
def jobs_beside(work: Callable[[], object]) -> Iterator[None]:
    """Run ``work`` (picklable: a module-level function or a partial of one) in a child process
    while the body runs; each gets half the threads.

    Raises:
        InputError: the second process stopped on bad input (its message).
        RuntimeError: the child failed otherwise (its traceback is on stderr).
    """
    total = torch.get_num_threads()
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    level = logging.getLogger("poisonlab").getEffectiveLevel()
    child = ctx.Process(target=_worker, args=(work, total // 2, level, errors),
                        name="poisonlab-jobs")
    child.start()
    log.info("jobs start in a second process %d; %d of %d threads each", child.pid, total // 2, total)
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
        raise RuntimeError(f"the second process failed (exit code {child.exitcode}); see its traceback above")
