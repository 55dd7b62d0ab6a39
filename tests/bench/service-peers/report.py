"""Aggregate the cells of one service bench run: results.json, results.md (the tables for
BENCHMARKS.md) and service-vs-peers.png (sessions/min by target, client and concurrency).

usage: report.py OUT_DIR
"""

import glob
import json
import os
import statistics
import sys

TARGETS = ["leakwarden", "browserless", "launch"]
LABEL = {
    "leakwarden": "leakwarden-runner serve",
    "browserless": "browserless",
    "launch": "client launches Chromium",
}
SCENARIOS = ["clean", "kill-client", "hang-client", "kill-service", "term-service"]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def load(out):
    cells = []
    for p in sorted(glob.glob(os.path.join(out, "cells", "*", "result.json"))):
        with open(p) as f:
            r = json.load(f)
        r["cell"] = os.path.basename(os.path.dirname(p))
        cells.append(r)
    return cells


def order(t):
    return TARGETS.index(t) if t in TARGETS else 9


def throughput(cells):
    groups = {}
    for r in cells:
        if r["mode"] == "clean":
            groups.setdefault((r["concurrency"], r["client"], r["target"]), []).append(r)
    rows = []
    for (c, client, t), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order(kv[0][2]))):
        spm = [r["sessions_per_min"] for r in rs]
        rows.append({
            "concurrency": c, "client": client, "target": t, "reps": len(rs),
            "spm_median": med(spm), "spm_min": min(spm), "spm_max": max(spm),
            "cpu_s_per_session": med([r.get("cell_cpu_s_per_session") for r in rs]),
            "connect_p50_ms": med([r.get("connect_p50_ms") for r in rs]),
            "connect_p95_ms": med([r.get("connect_p95_ms") for r in rs]),
            "failed": sum(r["failed"] for r in rs), "planned": sum(r["sessions_planned"] for r in rs),
            "left_2s": [max(r["left_2s"]["processes"] for r in rs), max(r["left_2s"]["dirs"] for r in rs)],
            "left_late": [max(r["left_late"]["processes"] for r in rs), max(r["left_late"]["dirs"] for r in rs)],
        })
    return rows


def leftovers(cells, rows):
    table = {}
    for r in rows:
        cur = table.setdefault((r["target"], "clean"), {"left_2s": [0, 0], "left_late": [0, 0]})
        for k in ("left_2s", "left_late"):
            cur[k] = [max(a, b) for a, b in zip(cur[k], r[k])]
    for r in cells:
        if r["mode"] in SCENARIOS[1:]:
            e = {k: [r[k]["processes"], r[k]["dirs"]] for k in ("left_2s", "left_late") if k in r}
            if "left_after_restart" in r:
                e["after_restart"] = [r["left_after_restart"]["processes"], r["left_after_restart"]["dirs"]]
            for k in ("service_rc", "service_exit_s"):
                if k in r:
                    e[k] = r[k]
            table[(r["target"], r["mode"])] = e
    return table


def markdown(rows, table, overhead, late):
    out = ["| conc. | client | target | sessions/min median (range) | CPU-s/session | connect → first navigation p50 / p95 ms | failed |",
           "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['concurrency']} | {r['client']} | {LABEL.get(r['target'], r['target'])} | "
                   f"{fmt(r['spm_median'])} ({fmt(r['spm_min'])}–{fmt(r['spm_max'])}) | "
                   f"{fmt(r['cpu_s_per_session'], 2)} | {fmt(r['connect_p50_ms'], 0)} / {fmt(r['connect_p95_ms'], 0)} | "
                   f"{r['failed']}/{r['planned']} |")
    ratio = []
    for client in sorted({r["client"] for r in rows}):
        by = {r["target"]: r["spm_median"] for r in rows if r["concurrency"] == 2 and r["client"] == client}
        if by.get("leakwarden") and by.get("browserless"):
            ratio.append(f"{client}: {by['leakwarden'] / by['browserless']:.2f}×")
    if ratio:
        out += ["", "leakwarden-runner serve / browserless sessions/min at concurrency 2: " + ", ".join(ratio)
                + " (target ≥ 1.2×)"]
    out += ["", f"Leftovers (processes / directories) 2 s and {late} s after the event "
            "(hang: after the services' timeout):", "",
            "| target | " + " | ".join(SCENARIOS) + " |", "|---|" + "---|" * len(SCENARIOS)]
    for t in sorted({k[0] for k in table}, key=order):
        cells = []
        for s in SCENARIOS:
            e = table.get((t, s))
            if e is None:
                cells.append("n/a")
                continue
            txt = " → ".join(f"{p}/{d}" for p, d in (e.get("left_2s", ["?", "?"]), e.get("left_late", ["?", "?"])))
            if "after_restart" in e:
                txt += f"; after restart {e['after_restart'][0]}/{e['after_restart'][1]}"
            if "service_rc" in e:
                txt += f"; exit {e['service_rc']} in {e.get('service_exit_s')} s"
            cells.append(txt)
        out.append(f"| {LABEL.get(t, t)} | " + " | ".join(cells) + " |")
    if overhead:
        out += ["", "| target | direct median µs | through the service median / p95 µs | overhead per message µs |",
                "|---|---:|---:|---:|"]
        for t, o in sorted(overhead.items(), key=lambda kv: order(kv[0])):
            th = o.get("through", {})
            out.append(f"| {LABEL.get(t, t)} | {fmt(o['direct']['median_us'])} | "
                       f"{fmt(th.get('median_us'))} / {fmt(th.get('p95_us'))} | {fmt(o.get('overhead_median_us'))} |")
    return "\n".join(out) + "\n"


def chart(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    concs = sorted({r["concurrency"] for r in rows})
    series = sorted({(r["client"], r["target"]) for r in rows}, key=lambda s: (s[0], order(s[1])))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (client, t) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(concs):
            r = next((r for r in rows if r["concurrency"] == c and r["client"] == client and r["target"] == t), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["spm_median"])
                lo.append(r["spm_median"] - r["spm_min"])
                hi.append(r["spm_max"] - r["spm_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=f"{client} → {LABEL.get(t, t)}", capsize=2)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(concs))])
    ax.set_xticklabels([f"concurrency {c}" for c in concs])
    ax.set_ylabel("sessions / min (median, range)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main():
    out = sys.argv[1]
    cells = load(out)
    rows = throughput(cells)
    table = leftovers(cells, rows)
    overhead = {r["target"]: r for r in cells if r["mode"] == "overhead" and "direct" in r}
    late = next((r["late_s"] for r in cells), 30)
    md = markdown(rows, table, overhead, late)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"throughput": rows,
                   "leftovers": {f"{t}:{s}": e for (t, s), e in table.items()},
                   "overhead": overhead}, f, indent=1)
    chart(rows, os.path.join(out, "service-vs-peers.png"))
    print(md)


if __name__ == "__main__":
    main()
