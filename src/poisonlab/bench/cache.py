"""The stage cache: a stage's output folder is named by the hash of everything that produced it.

``OUT/cache/<stage>-<hash>/`` holds what the stage wrote and ``done.json`` (its inputs, seconds and
the run that built it). A folder that exists is reused, so a second run only redoes what changed;
a lock per folder lets two processes of one run share stages without building one twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poisonlab.bench.store import ResultsStore
from poisonlab.errors import InputError
from poisonlab.utils.io import atomic_dir, write_json
from poisonlab.utils.output import check_name, claim_output, file_lock

log = logging.getLogger(__name__)
MODEL = "model.safetensors"


def digest(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """Stages of one experiment under ``out/cache``; each one's cost is recorded in ``store``."""

    def __init__(self, out: Path, experiment: str, run_id: str, store: ResultsStore) -> None:
        self.out, self.experiment, self.run_id, self.store = out, experiment, run_id, store
        self.keys: dict[str, str] = {}

    def __call__(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The stage's output folder, built by ``build`` unless it exists; one builder at a time.

        Another process of the same run that needs the stage meanwhile waits for it and reuses it; the
        store marks a stage 'cached' only when an earlier run built it.
        """
        key = digest(inputs)
        self.keys[stage] = key
        path = self.out / "cache" / check_name(f"{stage}-{key}", "stage name", "the spec")
        with file_lock(self.out / "cache" / ".locks" / f"{stage}-{key}"):
            if path.is_symlink():
                raise InputError(f"{path} is a symlink: a stage folder is poisonlab's own; remove it")
            if (path / "done.json").is_file():  # what the stage cost when it was built (None for old caches)
                done = read_done(path / "done.json")
                seconds, hit = done.get("seconds"), done.get("run") != self.run_id
            else:
                log.info("stage %s: running", stage)
                start = time.perf_counter()
                with atomic_dir(path) as tmp:
                    claim_output(tmp, ())  # the stage's folder is poisonlab's: its builders write there
                    build(tmp)
                    seconds, hit = round(time.perf_counter() - start, 2), False
                    write_json(tmp / "done.json", {"stage": stage, "inputs": inputs, "seconds": seconds,
                                                   "run": self.run_id})
        self.store.stage(self.experiment, stage, key, seconds, hit)
        return path


def read_done(path: Path) -> dict[str, Any]:
    """A stage's ``done.json``; ``InputError`` naming it when it is not a JSON object."""
    try:
        done = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as err:
        raise InputError(f"{path}: unreadable stage record ({err}); remove its folder to rebuild the stage") from None
    if not isinstance(done, dict):
        raise InputError(f"{path}: not a stage record; remove its folder to rebuild the stage")
    return done
