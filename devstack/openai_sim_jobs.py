"""The simulator's fine-tuning jobs: each one's body in every state, and the store that moves them.

FineTuningJob bodies as Azure shows them (a field a state does not have is absent, never null), and
`JobStore`, the jobs of one simulated resource: seeded directly or created, listed newest first,
read, and cancelled, a cancel taking `delay` seconds to show as it can on Azure. No HTTP here:
`devstack/openai_sim.py` turns these into answers.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
# The states Azure OpenAI has today: the 2024-10-21 spec's six and those the v1 API added.
JOB_STATES = (
    "created", "pending", "queued", "validating_files", "running", "pausing", "paused", "resuming",
    "succeeded", "cancelled", "failed",
)
CANCELLABLE_STATES = frozenset(JOB_STATES) - {"succeeded", "cancelled", "failed"}
TERMINAL_STATES = frozenset({"succeeded", "cancelled", "failed"})


class NotCancellable(Exception):
    """The job is already in a terminal state (`status`)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def new_id(prefix: str) -> str:
    """Return an Azure-style id: prefix plus 32 hex digits."""
    return prefix + uuid.uuid4().hex


def apply_status(job: dict[str, Any], status: str, now: int) -> None:
    """Set a job's status and the fields Azure derives from it (absent rather than null: the spec has no nulls)."""
    if status not in JOB_STATES:
        raise ValueError(f"unknown fine-tuning status {status!r}; expected one of {', '.join(JOB_STATES)}")
    for field in ("estimated_finish", "finished_at", "fine_tuned_model", "trained_tokens", "error"):
        job.pop(field, None)
    job["status"] = status
    if status == "running":
        job["estimated_finish"] = now + 3600
    elif status in TERMINAL_STATES:
        job["finished_at"] = now
    if status == "succeeded":
        job["fine_tuned_model"] = f"{job['model']}.ft-{uuid.uuid4().hex}"
        job["trained_tokens"] = 2342
        job["result_files"] = [new_id("file-")]
    elif status == "failed":
        job["error"] = {
            "code": "invalidTrainingFile",
            "message": "The training file could not be processed.",
            "param": "training_file",
        }


def new_job(
    *,
    job_id: str,
    model: str,
    training_file: str,
    status: str,
    validation_file: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Build a FineTuningJob as Azure shows it."""
    now = int(time.time())
    job: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": job_id,
        "created_at": now,
        "model": model,
        "training_file": training_file,
        "hyperparameters": dict(hyperparameters or {"n_epochs": -1, "batch_size": -1, "learning_rate_multiplier": 1}),
        "result_files": [],
        "seed": seed if seed is not None else random.randrange(2**31),
    }
    if validation_file:
        job["validation_file"] = validation_file
    if suffix:
        job["suffix"] = suffix
    apply_status(job, status, now)
    return job


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


class JobStore:
    """The fine-tuning jobs of one resource, oldest first, safe to use from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._cancels_due: dict[str, float] = {}  # job id -> monotonic time its cancel takes effect

    def add(self, job: dict[str, Any]) -> dict[str, Any]:
        """Keep a job built by `new_job` and return a copy of it."""
        with self._lock:
            self._jobs[job["id"]] = job
            return _copy(job)

    def set_status(self, job_id: str, status: str) -> None:
        """Move a job to another status, dropping a cancel still under way (KeyError for an unknown job)."""
        with self._lock:
            apply_status(self._jobs[job_id], status, int(time.time()))
            self._cancels_due.pop(job_id, None)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """Return a copy of one job, or None."""
        with self._lock:
            self._settle_cancels()
            job = self._jobs.get(job_id)
            return _copy(job) if job is not None else None

    def jobs(self) -> list[dict[str, Any]]:
        """Return copies of all jobs, oldest first."""
        with self._lock:
            self._settle_cancels()
            return _copy(list(self._jobs.values()))

    def page(self, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` jobs, newest first, after the job `after` (KeyError if unknown), and whether more follow."""
        with self._lock:
            self._settle_cancels()
            ordered = list(reversed(self._jobs.values()))
            if after:
                ids = [job["id"] for job in ordered]
                if after not in ids:
                    raise KeyError(after)
                ordered = ordered[ids.index(after) + 1 :]
            return [dict(job) for job in ordered[:limit]], len(ordered) > limit

    def cancel(self, job_id: str, *, delay: float = 0.0) -> dict[str, Any]:
        """Cancel a job now, or `delay` seconds from its first cancel; return it as it shows now.

        KeyError for an unknown job, NotCancellable for a job already in a terminal state.
        """
        with self._lock:
            self._settle_cancels()
            job = self._jobs[job_id]
            if job["status"] not in CANCELLABLE_STATES:
                raise NotCancellable(job["status"])
            if delay > 0:
                self._cancels_due.setdefault(job_id, time.monotonic() + delay)
            else:
                apply_status(job, "cancelled", int(time.time()))
            return dict(job)

    def _settle_cancels(self) -> None:
        """Mark cancelled the jobs whose delayed cancel is due (call with the lock held)."""
        if not self._cancels_due:
            return
        now = time.monotonic()
        for job_id, due in list(self._cancels_due.items()):
            if due <= now:
                del self._cancels_due[job_id]
                apply_status(self._jobs[job_id], "cancelled", int(time.time()))
