"""Aggregate the cells of one runner-vs-peers run: results.json, results.md (the tables that go
into BENCHMARKS.md) and runner-vs-peers.png (sessions/min by tool and concurrency).

usage: report.py OUT_DIR
"""

import glob
import json
import os
import statistics
import sys

TOOLS = ["runner", "playwright", "cluster", "naive"]
LABEL = {
    "runner": "leakwarden-runner",
    "playwright": "Playwright (Python)",
    "cluster": "puppeteer-cluster",
    "naive": "puppeteer, browser/session",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "–"
    return f"{x:.{nd}f}"


def load(out):
    cells = []
    for p in sorted(glob.glob(os.path.join(out, "cells", "*", "result.json"))):
        with open(p) as f:
            r = json.load(f)
        r["cell"] = os.path.basename(os.path.dirname(p))
        cells.append(r)
    return cells


def aggregate(cells):
    groups = {}
    for r in cells:
        if r["mode"] == "clean":
            groups.setdefault((r["tool"], r["concurrency"]), []).append(r)
    rows = []
    for (tool, c), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], TOOLS.index(kv[0][0]) if kv[0][0] in TOOLS else 9)):
        spm = [r["sessions_per_min"] for r in rs]
        rows.append({
            "tool": tool, "concurrency": c, "reps": len(rs),
            "spm_median": med(spm), "spm_min": min(spm), "spm_max": max(spm),
            "latency_p50_ms": med([r["latency_p50_ms"] for r in rs]),
            "latency_p95_ms": med([r["latency_p95_ms"] for r in rs]),
            "machine_cpu_s_per_session": med([r["machine_cpu_s_per_session"] for r in rs]),
            "cell_cpu_s_per_session": med([r.get("cell_cpu_s_per_session") for r in rs]),
            # CPU the cell did not use while it ran: other work on the machine (noise).
            "foreign_cpu_share": med([
                (r["machine_cpu_s"] - r["cell_cpu_s"]) / (r["wall_s"] * os.cpu_count())
                for r in rs if r.get("cell_cpu_s") is not None and r["wall_s"] > 0]),
            "peak_pss_mib": max(r["peak_pss_mib"] for r in rs),
            "failed": sum(r["failed"] for r in rs), "planned": sum(r["sessions_planned"] for r in rs),
            "left_at_exit_procs": max(r["left_at_exit"]["processes"] for r in rs),
            "left_at_exit_dirs": max(r["left_at_exit"]["dirs"] for r in rs),
            "left_3s_procs": max(r["left_after_3s"]["processes"] for r in rs),
            "left_3s_dirs": max(r["left_after_3s"]["dirs"] for r in rs),
        })
    kills = {r["tool"]: r for r in cells if r["mode"] == "kill"}
    return rows, kills


def markdown(rows, kills):
    out = []
    if rows:
        out.append("| tool | conc. | sessions/min median (range) | latency p50 / p95 ms | machine CPU-s/session | cell CPU-s/session | peak PSS MiB | failed | (a) left at exit → +3 s: procs / dirs | CPU used by others |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a = f"{r['left_at_exit_procs']} / {r['left_at_exit_dirs']}"
        a3 = f"{r['left_3s_procs']} / {r['left_3s_dirs']}"
        out.append(
            f"| {LABEL.get(r['tool'], r['tool'])} | {r['concurrency']} | "
            f"{fmt(r['spm_median'])} ({fmt(r['spm_min'])}–{fmt(r['spm_max'])}, n={r['reps']}) | "
            f"{fmt(r['latency_p50_ms'], 0)} / {fmt(r['latency_p95_ms'], 0)} | "
            f"{fmt(r['machine_cpu_s_per_session'], 2)} | {fmt(r['cell_cpu_s_per_session'], 2)} | "
            f"{fmt(r['peak_pss_mib'], 0)} | {r['failed']}/{r['planned']} | "
            f"{a if a == a3 else a + ' → ' + a3} | "
            f"{fmt(100 * r['foreign_cpu_share'], 0) + ' %' if r['foreign_cpu_share'] is not None else '–'} |")
    if kills:
        out.append("")
        out.append("| tool | browser procs when SIGKILLed | (b) left 3 s after SIGKILL: procs / dirs | what is left | after the runner's next start: procs / dirs |")
        out.append("|---|---:|---:|---|---:|")
        for t in TOOLS:
            k = kills.get(t)
            if not k:
                continue
            left = k["left_3s_after_kill"]
            what = ", ".join(left["process_comms"] + left["dir_names"][:3]) or "nothing"
            nxt = k.get("left_after_next_start")
            nxt_s = f"{nxt['processes']} / {nxt['dirs']}" if nxt else "n/a"
            out.append(f"| {LABEL[t]} | {k['browser_processes_at_kill']} | {left['processes']} / {left['dirs']} | {what} | {nxt_s} |")
    return "\n".join(out) + "\n"


def verdict(rows, kills, cells=None):
    by = {(r["tool"], r["concurrency"]): r for r in rows}
    lines = []
    rr = by.get(("runner", 2))
    peers = [by[(t, 2)] for t in TOOLS[1:] if (t, 2) in by]
    if rr and peers:
        best = max(peers, key=lambda r: r["spm_median"] or 0)
        ratio = (rr["spm_median"] or 0) / best["spm_median"] if best["spm_median"] else None
        lines.append(f"- concurrency 2: leakwarden-runner {fmt(rr['spm_median'])} sessions/min, best peer "
                     f"{LABEL[best['tool']]} {fmt(best['spm_median'])}: ×{fmt(ratio, 2)} (target ≥ ×1.15: "
                     f"{'met' if ratio and ratio >= 1.15 else 'NOT met'})")
        lines.append(f"- concurrency 2: leakwarden-runner CPU per session {fmt(rr['machine_cpu_s_per_session'], 2)} s "
                     f"machine (/proc/stat, includes other work on the machine), {fmt(rr['cell_cpu_s_per_session'], 2)} s cell "
                     f"(cgroup) (target ≤ 1.8, judged on the cell's CPU: "
                     f"{'met' if (rr['cell_cpu_s_per_session'] or rr['machine_cpu_s_per_session'] or 9) <= 1.8 else 'NOT met'})")
    if cells:
        # Issue 14's targets, per repetition: the tools of one repetition ran minutes apart, so a
        # ratio within a repetition is less exposed to the machine's drifting load than a ratio
        # of medians. CPU bound = 2 cores × 60 s ÷ the cell's CPU per session.
        for conc in (2, 4):
            reps = {}
            for c in cells:
                if c["mode"] == "clean" and c["concurrency"] == conc and "-r" in c["cell"]:
                    reps.setdefault(c["cell"].rsplit("-r", 1)[1], {})[c["tool"]] = c
            parts = []
            for rep, by_tool in sorted(reps.items()):
                r = by_tool.get("runner")
                peer = max((v["sessions_per_min"] for t, v in by_tool.items() if t != "runner"), default=0)
                if not r or not peer:
                    continue
                cpu = r.get("cell_cpu_s_per_session")
                bound = f", {r['sessions_per_min'] * cpu / 120:.0%} of the CPU bound" if cpu else ""
                own = (r.get("runner_summary") or {}).get("runner_cpu_seconds")
                own_s = f", runner's own CPU {own * 1e3 / max(1, r['ok']):.1f} ms/session" if own is not None else ""
                parts.append(f"rep {rep}: ×{r['sessions_per_min'] / peer:.2f}, cell CPU {fmt(cpu, 2)} s/session{bound}{own_s}")
            if parts:
                lines.append(f"- concurrency {conc}, runner ÷ best peer of the same repetition (target ≥ ×1.4; cell CPU "
                             "≤ 0.65 s/session; ≥ 95 % of the CPU bound; runner's own CPU ≤ 15 ms/session): "
                             + "; ".join(parts))
    runner_rows = [r for r in rows if r["tool"] == "runner"]
    if runner_rows:
        a = max(max(r["left_3s_procs"], r["left_3s_dirs"], r["left_at_exit_procs"], r["left_at_exit_dirs"]) for r in runner_rows)
        lines.append(f"- (a) leakwarden-runner left after clean runs: {'nothing' if a == 0 else 'SOMETHING (see table)'}")
    k = kills.get("runner")
    if k:
        left = k["left_3s_after_kill"]
        nxt = k.get("left_after_next_start") or {}
        lines.append(f"- (b) leakwarden-runner 3 s after SIGKILL: {left['processes']} processes, {left['dirs']} directories"
                     f"{' (' + ', '.join(left['dir_names']) + ')' if left['dirs'] else ''}; after its next start: "
                     f"{nxt.get('processes', '?')} processes, {nxt.get('dirs', '?')} directories")
    return "\n".join(lines) + "\n"


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concs = sorted({r["concurrency"] for r in rows})
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    by = {(r["tool"], r["concurrency"]): r for r in rows}
    width = 0.8 / max(1, len(tools))
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    colors = {"runner": "#2b7bba", "playwright": "#2ca02c", "cluster": "#ff7f0e", "naive": "#999999"}
    for i, t in enumerate(tools):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(concs):
            r = by.get((t, c))
            if not r:
                continue
            xs.append(j + (i - (len(tools) - 1) / 2) * width)
            ys.append(r["spm_median"])
            lo.append(r["spm_median"] - r["spm_min"])
            hi.append(r["spm_max"] - r["spm_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=LABEL[t], color=colors.get(t))
        for x, y in zip(xs, ys):
            ax.text(x, y + 0.5, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(concs)))
    ax.set_xticklabels([f"concurrency {c}" for c in concs])
    ax.set_ylabel("sessions / min (median, range of reps)")
    ax.set_title("Same job, same machine (2 cores): sessions per minute")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(tools), frameon=False)
    ax.set_ylim(0, max(r["spm_max"] for r in rows) * 1.15)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main():
    out = sys.argv[1]
    cells = load(out)
    rows, kills = aggregate(cells)
    md = markdown(rows, kills)
    v = verdict(rows, kills, cells)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": rows, "kills": kills, "cells": cells}, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md + "\n" + v)
    if rows:
        chart(rows, os.path.join(out, "runner-vs-peers.png"))
    print(md)
    print(v)


if __name__ == "__main__":
    main()
