"""`make bench` cannot rot: a tiny run of it writes the doc, the JSON and the chart.

`python -m bench.run --smoke` runs every case a few dozen cancels against the simulator in its
own process. The test checks what the results say (every cancel succeeded, Key Vault reads,
every target judged, the files a reader opens), never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
