"""`python -m bench.run` (`make bench`): every case, interleaved, then docs/benchmarks.md, JSON and chart.

Order of work: start the simulator (own process) and the Key Vault emulator; measure the
simulator's ceiling with the cheapest client there is; run every (case, concurrency) pair once
per repetition, in a shuffled order per repetition, each in a fresh worker process with jobs
made beforehand; check that a short cache period makes our function re-read Key Vault once
per period; drain queues; time cold starts; profile the fast cases; write the results.
`--only drain` (or any of `bench.plan.PARTS`) measures those parts alone, in minutes, and keeps
every other figure from the last run's results.json, saying so in the doc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import chart, cold_start, load, report
from bench.backends import API_KEY, REPO, Backends
from bench.drain import DrainConfig, drain_runs, storage_ceiling, storage_op_costs
from bench.plan import FULL, PARTS, SMOKE, Plan
from bench.targets import ratios, summarize, targets
from devstack.openai_sim import latency_from_milliseconds

WORKER_TIMEOUT_SECONDS = 300
DRAIN_SLOWEST_RATE = 5.0  # messages/s: a drain child gets WORKER_TIMEOUT_SECONDS plus its messages at this rate
# Which keys of results.json each part writes (the rest, machine and targets, are the run's own).
PART_KEYS = {
    "throughput": ("plan", "simulator_ceiling", "runs", "summary", "cache_period_check", "profiles", "ratios"),
    "drain": ("drain",),
    "cold-start": ("cold_start",),
}


class BenchError(Exception):
    """A run failed or produced failed cancels: its figures would mean nothing."""


@dataclass
class Bench:
    """One benchmark run: the plan, the backends, a scratch directory, and what was measured."""

    plan: Plan
    backends: Backends
    scratch: Path
    results: dict[str, Any] = field(default_factory=dict)

    def jobs_file(self, warmup: int, timed: int) -> Path:
        ids = self.backends.create_jobs(warmup + timed)
        path = self.scratch / "jobs.json"
        path.write_text(json.dumps({"warmup": ids[:warmup], "timed": ids[warmup:]}), encoding="utf-8")
        return path

    def worker(
        self, module: str, *args: str, timeout: float = WORKER_TIMEOUT_SECONDS, **environ: str
    ) -> dict[str, Any]:
        """Run `python -m module args` with the app settings; its last stdout line as JSON."""
        try:
            completed = subprocess.run(
                [sys.executable, "-m", module, *args],
                check=False,
                cwd=REPO,
                env=self.backends.child_environ(**environ),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as err:
            raise BenchError(f"{module} {' '.join(args)} took over {timeout:.0f} s") from err
        if completed.returncode != 0:
            raise BenchError(f"{module} {' '.join(args)} failed:\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])

    def run_case(self, case: str, concurrency: int, *, cancels: int | None = None, **environ: str) -> dict[str, Any]:
        """One timed run of one case in a fresh process, with the Key Vault reads it caused."""
        jobs = self.jobs_file(self.plan.warmup(case, concurrency), cancels or self.plan.timed_cancels(case))
        self.backends.vault.reset_counts()
        result = self.worker("bench.worker", case, "--concurrency", str(concurrency), "--jobs", str(jobs), **environ)
        self.backends.clear_records()
        if result["failures"]:
            raise BenchError(
                f"{case} at concurrency {concurrency}: {result['failures']} failed cancels, "
                f"first: {result['first_failure']}"
            )
        result["kv_reads"] = self.backends.kv_reads()
        result["kv_tokens"] = self.backends.vault.token_count
        result["warmup_cancels"] = self.plan.warmup(case, concurrency)
        return result

    def simulator_ceiling(self) -> dict[str, float]:
        """Cancels/s the simulator serves to raw sockets that cost next to nothing, per concurrency."""
        ceiling = {}
        for concurrency in self.plan.concurrency:
            ids = self.backends.create_jobs(self.plan.ceiling_cancels)
            requests = [load.cancel_request(job_id, API_KEY) for job_id in ids]
            answered = load.exchange(self.backends.port, requests, concurrency=concurrency)
            if any(status != 200 for status in answered.statuses):
                raise BenchError(f"the simulator failed cancels: {sorted(set(answered.statuses))}")
            ceiling[str(concurrency)] = len(ids) / answered.seconds
        return ceiling

    def interleaved_runs(self, log: Any) -> list[dict[str, Any]]:
        """Every (case, concurrency) once per repetition, shuffled anew each repetition."""
        pairs = [(case, concurrency) for concurrency in self.plan.concurrency for case in self.plan.cases]
        shuffler = random.Random(self.plan.seed)
        runs = []
        for repetition in range(1, self.plan.repetitions + 1):
            shuffler.shuffle(pairs)
            for position, (case, concurrency) in enumerate(pairs, start=1):
                result = self.run_case(case, concurrency)
                result.update(repetition=repetition, position=position)
                runs.append(result)
                log(
                    f"  rep {repetition}/{self.plan.repetitions} {case:>12} c={concurrency:<3} "
                    f"{result['cancels_per_second']:8.1f} cancels/s  p50 {result['latency_ms']['p50']:7.2f} ms  "
                    f"p99 {result['latency_ms']['p99']:7.2f} ms  Key Vault reads {result['kv_reads']}"
                )
        return runs

    def cache_period_check(self, ours_rate: float) -> dict[str, Any]:
        """Our function with a short SECRET_CACHE_SECONDS, at top concurrency: one read per period."""
        period = self.plan.cache_period_seconds
        concurrency = max(self.plan.concurrency)
        cancels = max(50, int(ours_rate * self.plan.cache_check_seconds))
        result = self.run_case("ours", concurrency, cancels=cancels, SECRET_CACHE_SECONDS=str(period))
        span = result["span_seconds"]
        most = int(span // period) + 1  # a read at the start, then at most one each time the key expires
        return {
            "concurrency": concurrency,
            "cache_seconds": period,
            "span_seconds": span,
            "cancels": result["cancels"] + result["warmup_cancels"],
            "kv_reads": result["kv_reads"],
            "most_reads_allowed": most,
            "met": 1 <= result["kv_reads"] <= most,
        }

    def drain_child(self, config: DrainConfig, job_ids: list[str]) -> dict[str, Any]:
        """One drain configuration in a fresh runner process, against the local simulator."""
        jobs = self.scratch / "drain-jobs.json"
        jobs.write_text(json.dumps(job_ids), encoding="utf-8")
        return self.worker(
            "bench.drain",
            "--config",
            json.dumps(asdict(config)),
            "--jobs",
            str(jobs),
            timeout=WORKER_TIMEOUT_SECONDS + config.messages / DRAIN_SLOWEST_RATE,
            AZURE_OPENAI_ENDPOINT=self.backends.local_simulator.endpoint,
        )

    def drains(self, log: Any) -> dict[str, Any]:
        """Every drain configuration of the plan, the upstream answering with the plan's latency."""
        latency = latency_from_milliseconds(self.plan.drain_median_ms)
        assert latency is not None
        configs = self.plan.drain_configs(latency.mean)
        in_flight = max(config.in_flight for config in configs)
        storage = storage_ceiling(
            self.backends.azurite.connection_string,
            threads=in_flight,
            writes=10 * in_flight,
            azurite_pid=self.backends.azurite.pid,
        )
        log(
            f"  Azurite takes {storage['writes_per_second']:.0f} record writes/s from {in_flight} writers "
            f"(median {storage['median_ms']:.0f} ms each)"
        )
        storage["op_costs"] = storage_op_costs(
            self.backends.azurite.connection_string,
            azurite_pid=self.backends.azurite.pid,
            backlogs=self.plan.storage_backlogs,
            operations=self.plan.storage_operations,
        )
        for cost in storage["op_costs"]:
            log(
                f"  Azurite CPU with {cost['backlog']:,} messages waiting: Get Messages (16) {cost['receive_16_ms']:.1f} ms, "
                f"Put Message {cost['send_ms']:.1f} ms, Delete Message {cost['delete_ms']:.1f} ms"
            )
        runs = drain_runs(
            configs,
            simulator=self.backends.local_simulator,
            latency=latency,
            run_child=self.drain_child,
            azurite_pid=self.backends.azurite.pid,
            log=log,
        )
        return {"latency": asdict(latency), "mean_latency_ms": latency.mean * 1000, "storage": storage, "runs": runs}

    def profiles(self, out: Path) -> dict[str, Any]:
        """Microseconds of client time per cancel by owner, one case at a time, concurrency 1."""
        profiles = {}
        for case in self.plan.profile_cases:
            jobs = self.jobs_file(self.plan.warmup_per_thread, self.plan.profile_cancels)
            text = out / f"profile-{case}.txt"
            profiles[case] = self.worker("bench.profile", case, "--jobs", str(jobs), "--text", str(text))
            profiles[case]["text"] = text.name
        return profiles


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("requests", "urllib3", "openai", "azure-functions", "azure-identity", "azure-keyvault-secrets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def run(
    plan: Plan, *, out: Path, doc: Path, command: str, parts: Sequence[str] = PARTS, log: Any = print
) -> dict[str, Any]:
    """Measure `parts` of `plan`, keep the others from `out`'s last results.json; write the JSON, charts and doc."""
    out.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    generated_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    results = _kept_results(out / "results.json", parts)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, Backends(Path(scratch)) as backends:
        bench = Bench(plan, backends, Path(scratch))
        log(
            f"simulator: pid {backends.simulator_pid} at {backends.endpoint}; Key Vault emulator at "
            f"{backends.vault.vault_url} (threads of this process)"
        )
        if "throughput" in parts:
            results.update(_throughput(bench, log))
        if "drain" in parts:
            log(f"drain: {plan.drain_median_ms:g} ms median upstream latency, the app in the local runner")
            results["drain"] = bench.drains(log)
        if "cold-start" in parts:
            results["cold_start"] = _cold_start(bench, log)
        if "throughput" in parts:
            log("profiles: " + ", ".join(plan.profile_cases))
            results["profiles"] = bench.profiles(out)
    measured = {part: {"generated_at": generated_at, "command": command} for part in parts}
    results.update(
        schema_version=1,
        generated_at=generated_at,
        command=command,
        machine={**machine(), "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]}},
        measured={**results.get("measured", {}), **measured},
    )
    results["targets"] = targets(results)
    results["elapsed_seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    chart.throughput_chart(results, out / "throughput.png")
    chart.drain_chart(results, out / "drain.png")
    doc.write_text(report.markdown(results, doc_dir=doc.parent, out=out), encoding="utf-8")
    log(report.summary_text(results))
    log(f"wrote {doc}, {out / 'results.json'}, {out / 'throughput.png'} in {results['elapsed_seconds']:.0f} s")
    return results


def _kept_results(path: Path, parts: Sequence[str]) -> dict[str, Any]:
    """The last run's figures of every part not measured now (none when every part is)."""
    missing = [part for part in PARTS if part not in parts]
    if not missing:
        return {}
    try:
        last = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BenchError(f"--only {' '.join(parts)} keeps the other parts from {path}, which is unreadable") from err
    kept = {key: last[key] for part in missing for key in PART_KEYS[part] if key in last}
    kept["measured"] = {
        part: last.get("measured", {}).get(part, {"generated_at": last["generated_at"], "command": last["command"]})
        for part in missing
    }
    return kept


def _throughput(bench: Bench, log: Any) -> dict[str, Any]:
    """Simulator ceiling, every case interleaved, the cache-period check."""
    plan = bench.plan
    ceiling = bench.simulator_ceiling()
    log(
        "simulator ceiling (raw sockets, near-free client): "
        + ", ".join(f"{rate:,.0f} cancels/s at concurrency {concurrency}" for concurrency, rate in ceiling.items())
    )
    runs = bench.interleaved_runs(log)
    summary = summarize(runs, plan)
    top = max(plan.concurrency)
    log(f"cache-period check: our function, SECRET_CACHE_SECONDS={plan.cache_period_seconds:g}, c={top}")
    cache_check = bench.cache_period_check(summary["ours"][str(top)]["cancels_per_second"])
    log(f"  {cache_check['kv_reads']} Key Vault reads in {cache_check['span_seconds']:.1f} s")
    return {
        "plan": asdict(plan),
        "simulator_ceiling": ceiling,
        "runs": runs,
        "summary": summary,
        "cache_period_check": cache_check,
        "ratios": ratios(summary, plan),
    }


def _cold_start(bench: Bench, log: Any) -> dict[str, Any]:
    """Fresh processes' first cancels, api-key and Entra modes, ours and naive alternating."""
    plan, local = bench.plan, bench.backends.local_simulator
    log(f"cold starts: {plan.cold_starts} fresh processes each, api-key and Entra modes, ours and naive alternating")
    cold_ids = [
        local.create_job(status="running")["id"]
        for _ in range(cold_start.jobs_needed(plan.cold_starts, plan.importtime_samples))
    ]
    cold = cold_start.measure(
        cold_ids,
        bench.backends.child_environ(AZURE_OPENAI_ENDPOINT=local.endpoint),
        REPO,
        samples=plan.cold_starts,
        importtime_samples=plan.importtime_samples,
        log=log,
    )
    return {
        **cold,
        "median_ms": {
            kind: {phase: statistics.median(sample[phase] for sample in samples) * 1000 for phase in samples[0]}
            for kind, samples in cold["runs"].items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the benchmark still works")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench", help="results JSON, chart, profiles")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--repetitions", type=int, help="override the plan's repetitions")
    parser.add_argument("--cancels", type=int, help="override the plan's timed cancels per run")
    parser.add_argument("--concurrency", type=int, nargs="+", help="override the plan's concurrency levels")
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=PARTS, help="measure these parts, keep the rest from --out"
    )
    parser.add_argument(
        "--no-sweep", action="store_true", help="drain only the shipped settings and the rate limits (the targets)"
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.no_sweep:
        plan = replace(plan, drain_threads=(), drain_batches=())
    if args.repetitions:
        plan = replace(plan, repetitions=args.repetitions)
    if args.cancels:
        plan = replace(plan, cancels=args.cancels)
    if args.concurrency:
        plan = replace(plan, concurrency=tuple(args.concurrency))
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    try:
        run(plan, out=args.out.resolve(), doc=args.doc.resolve(), command=command, parts=args.only)
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
