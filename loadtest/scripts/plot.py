"""Plots latency percentiles against offered load from `opsfleet-loadtest --json` lines.

    python loadtest/scripts/plot.py target/loadtest/open-loop.jsonl BENCHMARKS-latency.png

Each line is one open-loop run; the x axis is the offered load in jobs/s, the y axis the
event->start and event->done percentiles in ms (log scale).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    runs = []
    with open(source, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line.startswith("{"):
                runs.append(json.loads(line))
    runs = [r for r in runs if r.get("offered_events_per_sec")]
    if not runs:
        sys.exit(f"{source}: no open-loop runs")
    runs.sort(key=lambda r: r["offered_events_per_sec"])
    offered = [r["offered_events_per_sec"] * r["resources_per_event"] for r in runs]
    figure, axes = plt.subplots(figsize=(8, 5))
    for kind, style in (("event_to_start_ms", "-"), ("event_to_done_ms", "--")):
        for quantile, colour in (("p50", "tab:blue"), ("p90", "tab:orange"), ("p99", "tab:red")):
            values = [max(r[kind][quantile], 1) for r in runs]
            label = f"{kind.replace('_ms', '').replace('_', ' ')} {quantile}"
            axes.plot(offered, values, style, color=colour, marker="o", label=label)
    first = runs[0]
    axes.set_yscale("log")
    axes.set_xlabel("offered load (jobs/s, one job per event, open loop)")
    axes.set_ylabel("latency from the event's due time (ms)")
    axes.set_title(
        f"opsfleet on {first['backend']} (fauxqs + DynamoDB Local): {first['workers']} workers, "
        f"{first['partitions']} partitions, noop"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"wrote {target} from {len(runs)} runs")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot.py RUNS.jsonl OUT.png")
    main(sys.argv[1], sys.argv[2])
