"""Cold start: a fresh process's first cancel, ours against the naive script, and where imports go.

Each sample is a new interpreter, `python -m bench.first_cancel ours|naive JOB_ID`, which sets
its case up (ours: import `function_app` and index it as the host does; naive: import requests,
azure-identity and azure-keyvault-secrets) and makes one cancel (token, Key Vault, upstream).
Times come from CLOCK_MONOTONIC, which parent and child share, so interpreter start-up counts too.
The import breakdown is one more run of each under `python -X importtime`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KINDS = ("ours", "naive")
IMPORTTIME_TOP = 8  # top-level imports listed per kind


def run_child(kind: str, job_id: str, environ: Mapping[str, str], repo: Path) -> dict[str, float]:
    """One fresh process's first cancel, in seconds: start-up, azure-functions, set-up, first cancel, total."""
    spawned = time.monotonic()
    completed = _first_cancel(kind, job_id, environ, repo)
    marks = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "interpreter": marks["started"] - spawned,
        "azure_functions": marks["platform"] - marks["started"],
        "setup": marks["ready"] - marks["platform"],
        "first_cancel": marks["done"] - marks["ready"],
        "total": marks["done"] - spawned,
        "total_less_azure_functions": marks["done"] - spawned - (marks["platform"] - marks["started"]),
    }


def import_breakdown(kind: str, job_ids: Sequence[str], environ: Mapping[str, str], repo: Path) -> dict[str, Any]:
    """`python -X importtime` cold starts (one per job id): the slowest top-level imports, median ms."""
    samples = [
        parse_importtime(_first_cancel(kind, job_id, environ, repo, "-X", "importtime").stderr) for job_id in job_ids
    ]
    modules = {name for sample in samples for name in sample if name.split(".")[0] != "bench"}  # not the harness
    medians = {name: statistics.median(sample.get(name, 0.0) for sample in samples) for name in modules}
    ranked = sorted(medians.items(), key=lambda item: item[1], reverse=True)
    return {
        "samples": len(samples),
        "total_ms": statistics.median(sum(sample.values()) for sample in samples),
        "top": [{"module": name, "cumulative_ms": ms} for name, ms in ranked[:IMPORTTIME_TOP]],
    }


def _first_cancel(
    kind: str, job_id: str, environ: Mapping[str, str], repo: Path, *python_options: str
) -> subprocess.CompletedProcess[str]:
    """Run `python [options] -m bench.first_cancel kind job_id` in a fresh process."""
    completed = subprocess.run(
        [sys.executable, *python_options, "-m", "bench.first_cancel", kind, job_id],
        check=False,
        cwd=repo,
        env=dict(environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"cold start of {kind} {' '.join(python_options)} failed:\n{completed.stderr[-2000:]}")
    return completed


def parse_importtime(stderr: str) -> dict[str, float]:
    """Cumulative milliseconds of each top-level import (nesting level 0) in `-X importtime` output."""
    top_level: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name_field = line[len("import time:") :].split("|")
        if len(name_field) - len(name_field.lstrip(" ")) == 1:  # one space: not nested in another import
            name = name_field.strip()
            top_level[name] = top_level.get(name, 0.0) + int(cumulative) / 1000
    return top_level


def measure(
    job_ids: Sequence[str],
    environ: Mapping[str, str],
    repo: Path,
    *,
    samples: int,
    importtime_samples: int,
    log: Any = print,
) -> dict[str, Any]:
    """`samples` cold starts of each kind, alternating, then `importtime_samples` import breakdowns each."""
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    jobs = iter(job_ids)
    for index in range(samples):
        for kind in KINDS if index % 2 == 0 else KINDS[::-1]:
            runs[kind].append(run_child(kind, next(jobs), environ, repo))
        log(
            f"  cold start {index + 1}/{samples}: ours {runs['ours'][-1]['total'] * 1000:.0f} ms, "
            f"naive {runs['naive'][-1]['total'] * 1000:.0f} ms"
        )
    return {
        "samples": samples,
        "runs": runs,
        "importtime": {
            kind: import_breakdown(kind, [next(jobs) for _ in range(importtime_samples)], environ, repo)
            for kind in KINDS
        },
    }


def jobs_needed(samples: int, importtime_samples: int) -> int:
    return (samples + importtime_samples) * len(KINDS)
