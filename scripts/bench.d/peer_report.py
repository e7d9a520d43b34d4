"""Tables, CSV and plot of a `scripts/bench peer` run.

Reads the run's results (one JSON object per parley-load run, with the
scenario and the 1-minute load average before it, as the script wrote them)
and writes into OUT: peer.md (markdown tables: Parley, Centrifugo, ratio),
peer-sweep.csv (the open-loop rate sweep) and, when matplotlib is there,
peer-latency.png (send -> deliver p50/p99 against offered rate, both systems).

A figure whose run started with the load average above --max-load is marked
with that load beside it.

Usage: peer_report.py RESULTS.jsonl OUT --max-load 1.5 --machine "..."
"""

import argparse
import csv
import json
import os
import sys

SIDES = ("parley", "centrifugo")
# The latency bound of "the highest rate served", in ms.
P99_BOUND_MS = 100.0


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def last(records, **match):
    """The last record whose fields equal `match`, or None."""
    found = None
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            found = r
    return found


class Fmt:
    def __init__(self, max_load):
        self.max_load = max_load

    def mark(self, rec):
        if rec is not None and rec.get("load1", 0) > self.max_load:
            return f" (load {rec['load1']:.1f})"
        return ""

    def num(self, rec, key, digits=2, unit=""):
        if rec is None or rec.get(key) is None:
            return "—"
        return f"{rec[key]:,.{digits}f}{unit}{self.mark(rec)}"


def ratio(p, c, key):
    if p is None or c is None or not p.get(key) or not c.get(key):
        return "—"
    return f"{p[key] / c[key]:.2f}"


def served(records, side):
    """The highest offered rate at which p99 < bound and every offered
    message was delivered, with the runs' worst load; (None, None) if none."""
    best = None
    for r in records:
        if r.get("mode") != "flood" or r["target"] != side:
            continue
        ok = (
            r["delivered"] == r["offered"]
            and r["lost"] == 0
            and r["p99_ms"] < P99_BOUND_MS
        )
        if ok and (best is None or r["rate"] > best["rate"]):
            best = r
    return best


def summary(records, fmt):
    rates = sorted({r["rate"] for r in records if r.get("mode") == "flood"})
    rows = []

    def row(name, p, c, cell, key=None):
        rows.append(
            f"| {name} | {cell(p)} | {cell(c)} | {ratio(p, c, key) if key else ''} |"
        )

    def metric(name, p, c, key, digits, unit=""):
        """A row of one figure of both sides, with their ratio."""
        row(name, p, c, lambda r: fmt.num(r, key, digits, unit), key)

    if rates:
        mid = 1000 if 1000 in rates else rates[len(rates) // 2]
        p, c = (last(records, mode="flood", rate=mid, target=s) for s in SIDES)
        pairs = (p or c or {}).get("pairs", "?")
        metric(
            f"server CPU per delivered message, 1:1 open-loop at {mid:,} msg/s ({pairs} pairs)",
            p, c, "cpu_ms_per_msg", 3, " ms",
        )
        metric(f"send → deliver p50 at {mid:,} msg/s", p, c, "p50_ms", 1, " ms")
        metric(f"send → deliver p99 at {mid:,} msg/s", p, c, "p99_ms", 1, " ms")
        metric(f"server peak RSS at {mid:,} msg/s", p, c, "peak_rss_mib", 0, " MiB")
        p, c = (served(records, s) for s in SIDES)
        row(
            f"highest offered rate (of {', '.join(f'{r:,}' for r in rates)}) with p99 < {P99_BOUND_MS:.0f} ms and all delivered",
            p, c, lambda r: fmt.num(r, "rate", 0, " msg/s") if r else "none", "rate",
        )
        top = rates[-1]
        p, c = (last(records, mode="flood", rate=top, target=s) for s in SIDES)
        row(
            f"at {top:,} msg/s: delivered of offered, p99",
            p, c,
            lambda r: "—" if r is None else
            f"{r['delivered']:,} of {r['offered']:,}, p99 {r['p99_ms']:,.1f} ms{fmt.mark(r)}",
        )
    p, c = (last(records, mode="chat", target=s) for s in SIDES)
    if p or c:
        d = p or c
        metric(
            f"1:1 closed-loop, {d['pairs']} pairs, window {d['window']}: messages/s",
            p, c, "msgs_per_sec", 0,
        )
        metric("… its send → deliver p99", p, c, "p99_ms", 1, " ms")
        metric("… its server CPU per message", p, c, "cpu_ms_per_msg", 3, " ms")
    p, c = (last(records, mode="group", target=s) for s in SIDES)
    if p or c:
        d = p or c
        name = f"{d['members']}-member group, {d['messages']} msgs at {d['rate']} msg/s"
        metric(f"{name}: p50 send → last member", p, c, "p50_ms", 1, " ms")
        metric(f"{name}: p99 send → last member", p, c, "p99_ms", 1, " ms")
        metric(f"{name}: server CPU per delivery", p, c, "cpu_ms_per_msg", 4, " ms")
    p, c = (last(records, mode="idle", target=s) for s in SIDES)
    if p or c:
        d = p or c
        metric(f"idle memory per WebSocket ({d['connections']:,} held)", p, c, "kib_per_connection", 1, " KiB")
        metric(f"idle CPU, {d['connections']:,} held", p, c, "idle_cpu_percent", 1, " % of a core")
    head = [
        "| measurement | Parley (embedded) | Centrifugo v6.9.1 | ratio (Parley ÷ Centrifugo) |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(head + rows)


def sweep_rows(records):
    return sorted(
        (r for r in records if r.get("mode") == "flood"),
        key=lambda r: (r["rate"], SIDES.index(r["target"]), r.get("order", 0)),
    )


def sweep_table(records, fmt):
    lines = [
        "| offered msg/s | system | delivered of offered | refused | p50 | p99 | max | server CPU per message | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sweep_rows(records):
        lines.append(
            f"| {r['rate']:,} | {r['target']} | {r['delivered']:,} of {r['offered']:,}{fmt.mark(r)} "
            f"| {r['refused']:,} | {r['p50_ms']:,.1f} ms | {r['p99_ms']:,.1f} ms | {r['max_ms']:,.1f} ms "
            f"| {fmt.num(r, 'cpu_ms_per_msg', 3, ' ms')} | {fmt.num(r, 'peak_rss_mib', 0, ' MiB')} |"
        )
    return "\n".join(lines)


def write_csv(records, path):
    keys = ["target", "rate", "pairs", "secs", "offered", "accepted", "refused",
            "delivered", "lost", "p50_ms", "p99_ms", "max_ms", "cpu_ms_per_msg",
            "peak_rss_mib", "load1"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in sweep_rows(records):
            w.writerow(r)


def plot(records, path, machine):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = {"parley": "tab:blue", "centrifugo": "tab:orange"}
    for side in SIDES:
        rows = [r for r in sweep_rows(records) if r["target"] == side]
        if not rows:
            continue
        x = [r["rate"] for r in rows]
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.plot(x, [max(r[key], 0.01) for r in rows], style, marker="o",
                    color=colours[side], label=f"{side} {key[:3]}")
        for r in rows:
            if r["delivered"] < r["offered"]:
                share = 100.0 * r["delivered"] / max(r["offered"], 1)
                ax.annotate(f"{share:.0f}% delivered", (r["rate"], r["p99_ms"]),
                            textcoords="offset points", xytext=(4, 6), fontsize=8,
                            color=colours[side])
    ax.axhline(P99_BOUND_MS, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    rates = sorted({r["rate"] for r in sweep_rows(records)})
    ax.set_xticks(rates, [f"{r:,}" for r in rates])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, messages/s (1:1 pairs, open-loop)")
    ax.set_ylabel("send → deliver, ms")
    ax.set_title("Parley (embedded) vs Centrifugo v6.9.1: latency vs offered rate", fontsize=10)
    ax.text(0.01, 0.01, machine, transform=ax.transAxes, fontsize=7, color="grey")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return True


def main():
    a = argparse.ArgumentParser()
    a.add_argument("results")
    a.add_argument("out")
    a.add_argument("--max-load", type=float, default=1.5)
    a.add_argument("--machine", default="")
    args = a.parse_args()
    records = load(args.results)
    fmt = Fmt(args.max_load)
    os.makedirs(args.out, exist_ok=True)
    write_csv(records, os.path.join(args.out, "peer-sweep.csv"))
    plotted = plot(records, os.path.join(args.out, "peer-latency.png"), args.machine)
    loads = [r["load1"] for r in records if "load1" in r]
    md = [
        f"Machine: {args.machine}. 1-minute load average before the runs: "
        + (f"{min(loads):.2f}–{max(loads):.2f}" if loads else "—")
        + f"; figures from runs that started above {args.max_load} are marked with it.",
        "",
        summary(records, fmt),
        "",
        "Open-loop 1:1 sweep:",
        "",
        sweep_table(records, fmt),
    ]
    if plotted:
        md += ["", "![send → deliver p50/p99 vs offered rate](peer-latency.png)"]
    with open(os.path.join(args.out, "peer.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
