"""The charts of docs/benchmarks.md: cancels/s per case and concurrency, and queue drain rates (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def throughput_chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per case, one bar per concurrency, whiskers from slowest to fastest run."""
    summary = results["summary"]
    cases = list(summary)
    concurrencies = list(summary[cases[0]])
    width = 0.8 / len(concurrencies)
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    for index, concurrency in enumerate(concurrencies):
        cells = [summary[case][concurrency] for case in cases]
        medians = [cell["cancels_per_second"] for cell in cells]
        below = [cell["cancels_per_second"] - cell["cancels_per_second_min"] for cell in cells]
        above = [cell["cancels_per_second_max"] - cell["cancels_per_second"] for cell in cells]
        positions = [case_index + (index - (len(concurrencies) - 1) / 2) * width for case_index in range(len(cases))]
        bars = axes.bar(
            positions,
            medians,
            width,
            yerr=[below, above],
            capsize=3,
            label=f"concurrency {concurrency}",
            color=COLOURS[index % len(COLOURS)],
        )
        for bar, cell in zip(bars, cells):  # above the whisker, where no bar or cap hides it
            axes.annotate(
                f"{cell['cancels_per_second']:,.0f}",
                (bar.get_x() + bar.get_width() / 2, cell["cancels_per_second_max"]),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    axes.set_xticks(range(len(cases)), cases)
    axes.set_ylabel("cancels per second (median of runs)")
    ceiling = ", ".join(f"{rate:,.0f}/s at c={c}" for c, rate in results["simulator_ceiling"].items())
    axes.set_title(
        f"Cancel throughput against the fine-tuning simulator\n"
        f"simulator ceiling {ceiling}; {results['machine']['cores']} cores shared by client and simulator",
        fontsize=10,
    )
    axes.legend(loc="upper right", fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    axes.set_ylim(0, max(cell["cancels_per_second_max"] for row in summary.values() for cell in row.values()) * 1.15)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})  # no version stamp: the file changes only with the figures
    plt.close(figure)


def drain_chart(results: dict[str, Any], path: Path) -> None:
    """Drain rate against its bound: by pool size, by batch settings, and by rate limit R."""
    runs = results["drain"]["runs"]
    shipped = runs[0]
    unlimited = [run for run in runs if run["config"]["rate_limit"] is None]
    def batch(run: dict[str, Any]) -> tuple[int, int]:
        return run["config"]["batch_size"], run["config"]["new_batch_threshold"]

    panels = [
        (
            "pool threads (batch 16+8)",
            [run for run in unlimited if batch(run) == (16, 8)],
            lambda run: run["config"]["threads"],
            lambda run: str(run["config"]["threads"]),
        ),
        (
            "batchSize+newBatchThreshold (32 threads)",
            [run for run in unlimited if run["config"]["threads"] == shipped["config"]["threads"]],
            lambda run: sum(batch(run)),
            lambda run: "{}+{}".format(*batch(run)),
        ),
        (
            "rate limit R, req/s (shipped settings)",
            [run for run in runs if run["config"]["rate_limit"] is not None] + [shipped],
            lambda run: run["config"]["rate_limit"] or float("inf"),
            lambda run: f"{run['config']['rate_limit']:g}" if run["config"]["rate_limit"] else "none",
        ),
    ]
    figure, axes_row = plt.subplots(1, 3, figsize=(12, 4.2), dpi=110, sharey=True)
    for axes, (title, chosen, key, label) in zip(axes_row, panels):
        chosen = sorted(chosen, key=key)
        positions = range(len(chosen))
        axes.plot(positions, [r["bound"] for r in chosen], "--", color="#888888", marker="_", label="bound")
        if all("cpu" in r for r in chosen):
            axes.plot(
                positions, [r["cpu"]["bound"] for r in chosen], ":", color="#c0504d", label="CPU bound on this machine"
            )
        axes.plot(positions, [r["messages_per_second"] for r in chosen], "-o", color=COLOURS[0], label="drain rate")
        for x, r in zip(positions, chosen):
            axes.annotate(
                f"{r['messages_per_second']:.0f}",
                (x, r["messages_per_second"]),
                xytext=(0, -12),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
        axes.set_xticks(list(positions), [label(r) for r in chosen])
        axes.set_xlabel(title, fontsize=9)
        axes.spines[["top", "right"]].set_visible(False)
    axes_row[0].set_ylabel("messages per second")
    axes_row[0].legend(loc="upper left", fontsize=8)
    figure.suptitle(
        f"Queue drain through the local runner, upstream mean latency {results['drain']['mean_latency_ms']:.0f} ms; "
        f"{results['machine']['cores']} cores shared by runner, Azurite and simulator",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
