"""Cold start: a fresh process's first cancel, ours against the naive script, and where imports go.

Each sample is a new interpreter, `python -m bench.first_cancel CASE JOB_ID`, which sets
its case up (ours: import `function_app` and index it as the host does; naive: import requests,
azure-identity and azure-keyvault-secrets) and makes one cancel (token, Key Vault, upstream).
Both auth modes are measured: api-key (ours with the key from Key Vault against `naive`) and
Entra (ours with `AZURE_OPENAI_AUTH=entra` against `naive-entra`, a token per cancel, no Key Vault).
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

# variant name -> (bench.cases case, auth mode); the mode is AZURE_OPENAI_AUTH of the child's environment.
VARIANTS = {
    "ours": ("ours", "api-key"),
    "naive": ("naive", "api-key"),
    "ours-entra": ("ours", "entra"),
    "naive-entra": ("naive-entra", "entra"),
}
IMPORTTIME_TOP = 8  # top-level imports listed per kind


def run_child(kind: str, job_id: str, environ: Mapping[str, str], repo: Path) -> tuple[dict[str, float], list[str]]:
    """One fresh process's first cancel, in seconds (start-up, azure-functions, set-up, first cancel, total),
    and the app's source files it loaded."""
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
    }, marks["app_sources"]


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
    """`samples` cold starts of each variant, order alternating, then `importtime_samples` breakdowns each."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    jobs = iter(job_ids)
    names = list(VARIANTS)
    app_sources: list[str] = []
    for index in range(samples):
        for name in names if index % 2 == 0 else names[::-1]:
            case, mode = VARIANTS[name]
            timings, sources = run_child(case, next(jobs), {**environ, "AZURE_OPENAI_AUTH": mode}, repo)
            runs[name].append(timings)
            if case == "ours":
                app_sources = sources  # what the last cold start of ours loaded
        log(
            f"  cold start {index + 1}/{samples}: "
            + ", ".join(f"{name} {runs[name][-1]['total'] * 1000:.0f} ms" for name in names)
        )
    return {
        "samples": samples,
        "source_compile": source_compile_ms(repo, environ, app_sources),
        "variants": {name: {"case": case, "auth": mode} for name, (case, mode) in VARIANTS.items()},
        "runs": runs,
        "importtime": {
            name: import_breakdown(
                case, [next(jobs) for _ in range(importtime_samples)], {**environ, "AZURE_OPENAI_AUTH": mode}, repo
            )
            for name, (case, mode) in VARIANTS.items()
        },
    }


def source_compile_ms(repo: Path, environ: Mapping[str, str], sources: Sequence[str]) -> dict[str, Any]:
    """What compiling the app's own sources that a cold start loaded costs, which it pays when no bytecode is
    there to load: the deployment leaves `__pycache__` out (`.funcignore`), and here PYTHONDONTWRITEBYTECODE,
    when set, keeps any from being written. Median of 5 compilations of them all."""
    sources = [repo / source for source in sources]
    texts = [(path.read_text(encoding="utf-8"), str(path)) for path in sources]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        for text, name in texts:
            compile(text, name, "exec", dont_inherit=True)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "files": len(sources),
        "median_ms": statistics.median(times),
        "bytecode_written": not environ.get("PYTHONDONTWRITEBYTECODE"),
    }


def jobs_needed(samples: int, importtime_samples: int) -> int:
    return (samples + importtime_samples) * len(VARIANTS)
