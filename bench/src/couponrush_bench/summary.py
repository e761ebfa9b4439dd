"""The benchmark's outputs: the headline figures of each scenario, a Markdown summary of their medians and
PNG plots of representative runs."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

# The figures reported as medians, per scenario: (label, path into one run's figures).
HEADLINES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "ceiling": [
        ("req/s", ("http", "req_per_s")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("generator CPU us/req", ("http", "generator_cpu_us_per_request")),
        ("generator core share", ("http", "generator_core_share")),
    ],
    "accept": [
        ("accepted/s", ("http", "accepted_per_s")),
        ("generator core share", ("http", "generator_core_share")),
        ("p50 ms", ("http", "latency_ms", "p50")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("issue p99 ms", ("time_to_issue_ms", "p99")),
        ("drain s", ("drain_s",)),
    ],
    "hot-issue": [("issued/s", ("issued_per_s",)), ("span s", ("issuing_span_s",))],
    "steady": [
        ("req/s", ("http", "req_per_s")),
        ("http p99 ms", ("http", "latency_ms", "p99")),
        ("issue p50 ms", ("time_to_issue_ms", "p50")),
        ("issue p95 ms", ("time_to_issue_ms", "p95")),
        ("issue p99 ms", ("time_to_issue_ms", "p99")),
    ],
    "drop": [
        ("req/s", ("http", "req_per_s")),
        ("p99 ms", ("http", "latency_ms", "p99")),
        ("issued", ("invariants", "issued")),
        ("told OK", ("invariants", "told_ok")),
        ("last issue s", ("last_issue_after_its_acceptance_s",)),
        ("drain s", ("drain_s",)),
    ],
}


def summary_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# couponrush benchmark results",
        "",
        f"- when: {env['when']}; machine: {env['platform']}, {env['cpus']} CPUs; Python {env['python']}",
        f"- {env['postgres']}; {env['redis']}; broker: {env['broker']}",
        f"- command: `{env['command']}`",
        f"- options: `{report['options']}`",
        "",
        "Medians over the runs of each variant (the legacy design runs once: its batch interval dominates).",
        "",
    ]
    for scenario, variants in report["scenarios"].items():
        labels = [label for label, _ in HEADLINES[scenario]]
        lines += [f"## {scenario}", "", "| variant | runs | " + " | ".join(labels) + " |"]
        lines.append("|---|---|" + "---|" * len(labels))
        for variant, data in variants.items():
            medians = data["medians"]
            cells = [f"{medians[label]:g}" if label in medians else "-" for label in labels]
            lines.append(f"| {variant} | {len(data['runs'])} | " + " | ".join(cells) + " |")
        for variant, data in variants.items():
            cpu_runs = [run["cpu_ms_per_accepted"] for run in data["runs"] if "cpu_ms_per_accepted" in run]
            if cpu_runs:
                roles = sorted(cpu_runs[0], key=lambda r: -statistics.median(c.get(r, 0.0) for c in cpu_runs))
                parts = [f"{r} {statistics.median(c.get(r, 0.0) for c in cpu_runs):.3f}" for r in roles]
                lines += ["", f"CPU ms per accepted request, {variant} (median): " + ", ".join(parts)]
        checks = [
            f"{variant} run {n}: {run['invariants']}"
            for variant, data in variants.items()
            for n, run in enumerate(data["runs"], 1)
            if "invariants" in run
        ]
        if checks:
            lines += ["", "Invariants:", ""] + [f"- {c}" for c in checks]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_scenarios(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per scenario with series: latency over time and issued over time, per variant (median run)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional; the figures are in the JSON
        return []
    written: list[Path] = []
    for scenario, variants in report["scenarios"].items():
        with_series = {v: d for v, d in variants.items() if any("_series" in r for r in d["runs"])}
        if not with_series:
            continue
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        for variant, data in with_series.items():
            runs = [r for r in data["runs"] if "_series" in r]
            run = sorted(runs, key=lambda r: r["http"]["latency_ms"]["p99"])[len(runs) // 2]
            series = run["_series"]
            top.scatter(series["t"], series["latency_ms"], s=2, alpha=0.4, label=variant)
            issued_t = series["issued_t"]
            total = run["invariants"]["issued"]
            step = total / max(len(issued_t), 1)
            bottom.plot(issued_t, [step * (n + 1) for n in range(len(issued_t))], label=variant)
        top.set_ylabel("HTTP latency (ms)")
        top.set_yscale("log")
        top.legend(loc="upper right")
        bottom.set_ylabel("issued (cumulative)")
        bottom.set_xlabel("seconds since the first request")
        bottom.legend(loc="lower right")
        fig.suptitle(f"couponrush bench: {scenario} (median run per variant)")
        fig.tight_layout()
        path = out_dir / f"{scenario}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
