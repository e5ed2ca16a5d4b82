"""`make bench` cannot rot: a tiny run of it writes the doc, the JSON and the chart.

`python -m bench.run --smoke` runs every case a few dozen cancels against the simulator in its
own process, drains a few dozen queue messages through the local runner, and starts cold in
both auth modes. The test checks what the results say (every cancel succeeded, Key Vault reads,
every message drained to one record, every target judged, the files a reader opens), never how
fast anything was. Below it, the simulator's benchmark knobs: latency and the rate limit.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack.openai_sim import FineTuningSimulator, Latency, RateLimit, latency_from_milliseconds

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_smoke_run_writes_doc_json_and_chart(tmp_path: Path) -> None:
    out, doc = tmp_path / "bench", tmp_path / "benchmarks.md"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), "--doc", str(doc)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "simulator ceiling" in completed.stdout

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    plan = results["plan"]
    cells = [(case, concurrency) for case in plan["cases"] for concurrency in plan["concurrency"]]
    assert {(run["case"], run["concurrency"]) for run in results["runs"]} == set(cells)
    for run in results["runs"]:
        expected = plan["naive_cancels"] if run["case"] == "naive" else plan["cancels"]
        assert (run["failures"], run["cancels"]) == (0, expected), run
        # One read per process for every client that caches the key; one per cancel for the naive script.
        reads = run["cancels"] + run["warmup_cancels"] if run["case"] == "naive" else 1
        assert run["kv_reads"] == reads, run
    assert all(rate > 0 for rate in results["simulator_ceiling"].values())
    assert results["cache_period_check"]["met"], results["cache_period_check"]

    assert [target["target"].split(" at ")[0] for target in results["targets"]] == [
        "ours >= 0.9 x raw",
        "ours >= 0.9 x raw",
        "ours >= sdk",
        "ours >= sdk",
        "Key Vault reads: 1 per process per cache period, whatever the concurrency",
        "drain >= 0.9 x concurrency bound, shipped settings",
        "drain >= 0.85 x R, 0 lost, <= 1.5 calls/message, R=50/s",
        "cold first cancel no slower than naive, api-key mode, azure.functions preloaded",
        "cold first cancel no slower than naive, Entra mode, azure.functions preloaded",
    ]
    assert all(isinstance(target["met"], bool) for target in results["targets"])
    cold = results["cold_start"]
    assert set(cold["runs"]) == {"ours", "naive", "ours-entra", "naive-entra"}
    assert "function_app" in [entry["module"] for entry in cold["importtime"]["ours"]["top"]]
    assert "function_app" in [entry["module"] for entry in cold["importtime"]["ours-entra"]["top"]]

    drain = results["drain"]
    assert [(run["config"]["threads"], run["config"]["rate_limit"]) for run in drain["runs"]] == [
        (32, None),
        (5, None),
        (32, 50.0),
    ]
    for run in drain["runs"]:
        # Every message drained to one record, its cancel counted upstream; the pool is the one asked for.
        assert (run["lost"], run["distinct_jobs"]) == (0, run["messages"]), run
        assert run["pool_threads"] == run["config"]["threads"]
        assert run["upstream_calls"] >= run["messages"]
        assert run["messages_per_second"] > 0 and run["bound"] > 0
        assert 0 <= run["time_in_queue_s"]["p50"] <= run["time_in_queue_s"]["p99"]
    assert (out / "drain.png").read_bytes().startswith(PNG_SIGNATURE)

    assert (out / "throughput.png").read_bytes().startswith(PNG_SIGNATURE)
    text = doc.read_text(encoding="utf-8")
    assert "make bench" in text
    assert "](bench/throughput.png)" in text and "](bench/results.json)" in text and "](bench/drain.png)" in text
    assert "## Queue drain under latency and throttling" in text
    assert "| **ours** | 1 |" in text
    for profile in results["profiles"].values():
        assert (out / profile["text"]).is_file()


# --- the simulator's benchmark knobs ------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "burst", "steps"),
    [
        # A full bucket passes `burst` requests at once, then tells the next when a token is due.
        (10.0, 2, [(0.0, None), (0.0, None), (0.0, 0.1)]),
        # Refused requests take no token: each is told the same wait.
        (10.0, 1, [(0.0, None), (0.0, 0.1), (0.0, 0.1)]),
        # After 1/8 s half a token has come back: the wait is the other half; after 1/4 s a request passes.
        (4.0, 1, [(0.0, None), (0.125, 0.125), (0.125, None)]),
        # The bucket refills at `rate` but never beyond `burst`.
        (4.0, 2, [(0.0, None), (0.0, None), (10.0, None), (0.0, None), (0.0, 0.25)]),
    ],
)
def test_rate_limit_is_a_token_bucket(rate: float, burst: int, steps: list[tuple[float, float | None]]) -> None:
    clock = FakeClock()
    bucket = RateLimit(rate, burst=burst, clock=clock)
    waits = []
    for advance, _ in steps:
        clock.now += advance
        waits.append(bucket.take())
    assert waits == pytest.approx([wait for _, wait in steps])


def test_latency_has_the_median_asked_for_and_a_long_tail() -> None:
    latency = latency_from_milliseconds(150)
    assert latency == Latency(fixed=0.05, median=0.15, sigma=0.5)
    rand = random.Random(3)
    draws = sorted(latency.draw(rand) for _ in range(4001))
    assert min(draws) >= latency.fixed
    assert draws[2000] == pytest.approx(0.150, rel=0.05)
    assert draws[3960] > 2 * draws[2000]  # p99 beyond twice the median: the long tail
    assert sum(draws) / len(draws) == pytest.approx(latency.mean, rel=0.05)
    assert latency_from_milliseconds(0) is None


def test_a_throttled_request_gets_429_with_retry_after_ms() -> None:
    with FineTuningSimulator(api_key="k", rate_limit=RateLimit(0.5, burst=1)) as simulator:
        job = simulator.create_job()
        url = f"{simulator.endpoint}/openai/fine_tuning/jobs/{job['id']}?api-version=2024-10-21"
        first, second = requests.get(url, headers={"api-key": "k"}), requests.get(url, headers={"api-key": "k"})
    assert first.status_code == 200
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after-ms"]) <= 2000
    assert second.headers["retry-after"] in {"1", "2"}
    assert second.json()["error"]["code"] == "429"
    assert simulator.counts[("GET", "get")] == 2
