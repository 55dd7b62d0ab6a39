#!/usr/bin/env python3
"""Generates the Grafana dashboards in this directory (leakwarden-sidecar.json,
leakwarden-runner.json) from the panel lists below.

Edit this file, not the JSON, then run `python3 dashboards/generate.py`; `--check` exits 1 when a
JSON file is not what this script generates (tests/tests/ops_dashboards.rs runs it). Python's
standard library only. Every panel has a unit and a description; every query goes through the
`datasource` variable; `namespace`, `pod` and `instance` come from the scrape's target labels and
default to All (`.*`, which also matches series without the label, e.g. on a systemd host).
"""
import json
import pathlib
import sys

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
HERE = pathlib.Path(__file__).resolve().parent


def variables(build_info):
    """datasource, then namespace → pod → instance, each narrowing the next."""
    def query_var(name, label, query):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "regex": "",
            "options": [],
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            query_var("namespace", "Namespace", f"label_values({build_info}, namespace)"),
            query_var("pod", "Pod", f'label_values({build_info}{{namespace=~"$namespace"}}, pod)'),
            query_var(
                "instance",
                "Instance",
                f'label_values({build_info}{{namespace=~"$namespace", pod=~"$pod"}}, instance)',
            ),
        ]
    }


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, panel, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    def stat(self, title, description, expr, unit, w=4, thresholds=None, mappings=None):
        steps = [{"color": "green", "value": None}]
        for value, color in thresholds or []:
            steps.append({"color": color, "value": value})
        self._place(
            {
                "type": "stat",
                "title": title,
                "description": description,
                "datasource": DS,
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "color": {"mode": "thresholds"},
                        "thresholds": {"mode": "absolute", "steps": steps},
                        "mappings": mappings or [],
                    },
                    "overrides": [],
                },
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "justifyMode": "auto",
                    "orientation": "auto",
                    "textMode": "auto",
                },
                "targets": [target(expr, "", "A", instant=True)],
            },
            w,
            4,
        )

    def timeseries(self, title, description, queries, unit, w=12, h=8, mappings=None, stack=False):
        self._place(
            {
                "type": "timeseries",
                "title": title,
                "description": description,
                "datasource": DS,
                "fieldConfig": {
                    "defaults": {
                        "unit": unit,
                        "min": 0,
                        "color": {"mode": "palette-classic"},
                        "custom": {
                            "drawStyle": "line",
                            "lineWidth": 1,
                            "fillOpacity": 10,
                            "showPoints": "never",
                            "spanNulls": False,
                            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                        },
                        "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                        "mappings": mappings or [],
                    },
                    "overrides": [],
                },
                "options": {
                    "legend": {
                        "displayMode": "table",
                        "placement": "bottom",
                        "showLegend": True,
                        "calcs": ["lastNotNull", "max"],
                    },
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": [
                    target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)
                ],
            },
            w,
            h,
        )


def target(expr, legend, ref, instant=False):
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }


def dashboard(uid, title, description, build_info, layout):
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [
            {
                "title": "leakwarden dashboards",
                "type": "dashboards",
                "tags": ["leakwarden"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["leakwarden"],
        "templating": variables(build_info),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# Selectors. leakwarden_* names are unique to their program, so no job matcher is needed there;
# process_* and up are everyone's, so those carry the job.
S = 'namespace=~"$namespace", pod=~"$pod", instance=~"$instance"'
SJ = 'job="leakwarden", ' + S
RJ = 'job="leakwarden-runner", ' + S
# The sidecar beside the runner shares its namespace and pod, not its instance.
POD = 'namespace=~"$namespace", pod=~"$pod"'

# What a DaemonSet sidecar knows is the pod UID; kube-state-metrics' kube_pod_info knows the name.
# Join when it is there, fall back to the bare UID when it is not.
def by_pod(metric):
    own = f"sum by (pod_uid) ({metric}{{{S}}})"
    named = (
        f"{own} * on (pod_uid) group_left (namespace, pod) "
        'max by (pod_uid, namespace, pod) (label_replace(kube_pod_info, "pod_uid", "$1", "uid", "(.+)"))'
    )
    return f"topk(10, ({named}) or ({own} unless on (pod_uid) ({named})))"


def sidecar():
    d = Layout()
    d.row("Overview")
    d.stat("Orphaned processes", "Family processes whose launcher is gone (leakwarden_orphan_processes), all families.",
           f"sum(leakwarden_orphan_processes{{{S}}})", "short", thresholds=[(1, "red")])
    d.stat("Orphaned trees", "Browser trees whose owner is gone (leakwarden_orphan_trees).",
           f"sum(leakwarden_orphan_trees{{{S}}})", "short", thresholds=[(1, "red")])
    d.stat("Oldest orphan", "Age of the oldest orphaned process (leakwarden_oldest_orphan_age_seconds): above the policy's orphaned_for means it is not being killed.",
           f"max(leakwarden_oldest_orphan_age_seconds{{{S}}})", "s", thresholds=[(60, "orange"), (300, "red")])
    d.stat("Zombies", "Zombie processes waiting to be reaped (leakwarden_zombie_processes).",
           f"sum(leakwarden_zombie_processes{{{S}}})", "short", thresholds=[(5, "orange")])
    d.stat("Kills (1h)", "Processes and trees killed or terminated by policy in the last hour.",
           f'sum(increase(leakwarden_kills_total{{{S}, outcome=~"killed|terminated"}}[1h]))', "short")
    d.stat("Stale profile dirs", "Browser profile and temp directories no live process uses (leakwarden_stale_profile_dirs).",
           f"sum(leakwarden_stale_profile_dirs{{{S}}})", "short", thresholds=[(50, "orange")])

    d.row("Processes by family")
    d.timeseries("Processes", "Live processes per family (leakwarden_processes).",
                 [(f"sum by (family) (leakwarden_processes{{{S}}})", "{{family}}")], "short")
    d.timeseries("Orphans", "Orphaned processes and trees per family.",
                 [(f"sum by (family) (leakwarden_orphan_processes{{{S}}})", "{{family}} processes"),
                  (f"sum by (family) (leakwarden_orphan_trees{{{S}}})", "{{family}} trees")], "short")
    d.timeseries("Resident memory", "RSS summed over each family's processes (leakwarden_family_resident_memory_bytes).",
                 [(f"sum by (family) (leakwarden_family_resident_memory_bytes{{{S}}})", "{{family}}")], "bytes")
    d.timeseries("Open file descriptors", "Open FDs summed over each family's processes (leakwarden_family_open_fds).",
                 [(f"sum by (family) (leakwarden_family_open_fds{{{S}}})", "{{family}}")], "short")
    d.timeseries("Threads", "Threads summed over each family's processes (leakwarden_family_threads).",
                 [(f"sum by (family) (leakwarden_family_threads{{{S}}})", "{{family}}")], "short")
    d.timeseries("FD limit use (worst process)", "Highest open FDs / soft RLIMIT_NOFILE in each family (leakwarden_fd_limit_ratio_max); EMFILE at 100%.",
                 [(f"max by (family) (leakwarden_fd_limit_ratio_max{{{S}}})", "{{family}}")], "percentunit")

    d.row("Leaks")
    d.timeseries("Leak suspects", "Processes the leak detector judges to be growing, per family and resource (leakwarden_leak_suspects).",
                 [(f"sum by (family, resource) (leakwarden_leak_suspects{{{S}}})", "{{family}} {{resource}}")], "short")
    d.timeseries("Projected time to limit", "Time until the first leaking process of a family reaches its limit at the current slope (leakwarden_leak_time_to_limit_seconds).",
                 [(f"min by (family, resource) (leakwarden_leak_time_to_limit_seconds{{{S}}})", "{{family}} {{resource}}")], "s")

    d.row("Enforcement")
    d.timeseries("Kills by outcome", "Kill decisions per second by outcome (leakwarden_kills_total): killed, terminated, skipped, dry_run, rate_limited, failed, protected.",
                 [(f"sum by (outcome) (rate(leakwarden_kills_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "ops", stack=True)
    d.timeseries("Kills by rule", "Kill decisions per second by policy rule.",
                 [(f"sum by (rule) (rate(leakwarden_kills_total{{{S}}}[$__rate_interval]))", "{{rule}}")], "ops", stack=True)
    d.timeseries("Zombies", "Zombie processes (leakwarden_zombie_processes).",
                 [(f"sum by (instance) (leakwarden_zombie_processes{{{S}}})", "{{instance}}")], "short")
    d.timeseries("Stale profile directories", "Browser profile and temp directories no live process uses.",
                 [(f"sum by (instance) (leakwarden_stale_profile_dirs{{{S}}})", "{{instance}}")], "short")

    d.row("Pods (DaemonSet mode)")
    d.timeseries("Orphaned processes by pod", "Orphaned processes attributed to pods by cgroup path (leakwarden_pod_orphan_processes); names from kube-state-metrics when present.",
                 [(by_pod("leakwarden_pod_orphan_processes"), "{{namespace}}/{{pod}} {{pod_uid}}")], "short")
    d.timeseries("Browser memory by pod", "RSS of family processes per pod (leakwarden_pod_resident_memory_bytes).",
                 [(by_pod("leakwarden_pod_resident_memory_bytes"), "{{namespace}}/{{pod}} {{pod_uid}}")], "bytes")

    d.row("The sidecar itself")
    d.timeseries("Scan duration", "Time one /proc scan takes (leakwarden_scan_duration_seconds).",
                 [(f"histogram_quantile({q}, sum by (le) (rate(leakwarden_scan_duration_seconds_bucket{{{S}}}[$__rate_interval])))", f"p{int(q * 100)}")
                  for q in (0.5, 0.95, 0.99)], "s")
    d.timeseries("Scans", "Scans and failed scans per second; processes skipped per second by reason.",
                 [(f"sum(rate(leakwarden_scans_total{{{S}}}[$__rate_interval]))", "scans"),
                  (f"sum(rate(leakwarden_scan_failures_total{{{S}}}[$__rate_interval]))", "failures"),
                  (f"sum by (reason) (rate(leakwarden_skipped_processes_total{{{S}}}[$__rate_interval]))", "skipped: {{reason}}")], "ops")
    d.timeseries("Time since last scan", "Seconds since the last completed scan (leakwarden_last_scan_timestamp_seconds).",
                 [(f"time() - max by (instance) (leakwarden_last_scan_timestamp_seconds{{{S}}})", "{{instance}}")], "s", w=8)
    d.timeseries("Memory", "The sidecar's own RSS: flat in steady state.",
                 [(f"process_resident_memory_bytes{{{SJ}}}", "RSS {{instance}}")], "bytes", w=8)
    d.timeseries("Open FDs", "The sidecar's own open file descriptors: flat in steady state (it holds a pidfd per tree owner, no more).",
                 [(f"process_open_fds{{{SJ}}}", "{{instance}}")], "short", w=8)
    d.stat("Policy reload", "Whether the last policy reload succeeded (leakwarden_policy_last_reload_success).",
           f"min(leakwarden_policy_last_reload_success{{{S}}})", "bool_yes_no",
           mappings=[{"type": "value", "options": {"0": {"text": "failed", "color": "red"}, "1": {"text": "ok", "color": "green"}}}])
    d.stat("Targets up", "Sidecar targets Prometheus scrapes successfully.",
           f"sum(up{{{SJ}}})", "short")
    d.stat("CPU", "The sidecar's own CPU use (1.0 = one core).",
           f"sum(rate(process_cpu_seconds_total{{{SJ}}}[$__rate_interval]))", "percentunit")

    return dashboard(
        "leakwarden-sidecar",
        "leakwarden / Sidecar",
        "Orphaned and leaking browser process trees as leakwarden sees them, and what it killed.",
        "leakwarden_build_info",
        d,
    )


CIRCUIT = [{"type": "value", "options": {
    "0": {"text": "closed", "color": "green", "index": 0},
    "1": {"text": "half-open", "color": "orange", "index": 1},
    "2": {"text": "open", "color": "red", "index": 2}}}]


def runner():
    d = Layout()
    d.row("Overview")
    d.stat("Active sessions", "Sessions running now (leakwarden_runner_active_sessions).",
           f"sum(leakwarden_runner_active_sessions{{{S}}})", "short")
    d.stat("Active browsers", "Browsers the runner holds now (leakwarden_runner_active_browsers).",
           f"sum(leakwarden_runner_active_browsers{{{S}}})", "short")
    d.stat("Queue depth", "Sessions waiting for admission (leakwarden_runner_queue_depth).",
           f"sum(leakwarden_runner_queue_depth{{{S}}})", "short")
    d.stat("Circuit", "Launch circuit breaker: closed, half-open or open (leakwarden_runner_circuit_state).",
           f"max(leakwarden_runner_circuit_state{{{S}}})", "none", mappings=CIRCUIT,
           thresholds=[(1, "orange"), (2, "red")])
    d.stat("Cleanup leaks (1h)", "What the runner's /proc verification found left after closing sessions in the last hour.",
           f"sum(increase(leakwarden_runner_cleanup_leaks_total{{{S}}}[1h]))", "short", thresholds=[(1, "red")])
    d.stat("Tasks alive", "Tokio tasks alive in the runner (leakwarden_runner_tasks_alive): must stay bounded.",
           f"sum(leakwarden_runner_tasks_alive{{{S}}})", "short")

    d.row("Sessions")
    d.timeseries("Sessions by outcome", "Finished sessions per second by outcome (leakwarden_runner_sessions_total).",
                 [(f"sum by (outcome) (rate(leakwarden_runner_sessions_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "ops", stack=True)
    d.timeseries("Session duration", "Session duration quantiles (leakwarden_runner_session_duration_seconds).",
                 [(f"histogram_quantile({q}, sum by (le) (rate(leakwarden_runner_session_duration_seconds_bucket{{{S}}}[$__rate_interval])))", f"p{int(q * 100)}")
                  for q in (0.5, 0.95)], "s")
    d.timeseries("Launch duration", "Browser launch duration quantiles (leakwarden_runner_launch_duration_seconds).",
                 [(f"histogram_quantile({q}, sum by (le) (rate(leakwarden_runner_launch_duration_seconds_bucket{{{S}}}[$__rate_interval])))", f"p{int(q * 100)}")
                  for q in (0.5, 0.95)], "s", w=8)
    d.timeseries("Cleanup duration", "Session close + verification duration quantiles (leakwarden_runner_cleanup_duration_seconds).",
                 [(f"histogram_quantile({q}, sum by (le) (rate(leakwarden_runner_cleanup_duration_seconds_bucket{{{S}}}[$__rate_interval])))", f"p{int(q * 100)}")
                  for q in (0.5, 0.95)], "s", w=8)
    d.timeseries("Queue and concurrency", "Sessions waiting and running.",
                 [(f"sum(leakwarden_runner_queue_depth{{{S}}})", "queued"),
                  (f"sum(leakwarden_runner_active_sessions{{{S}}})", "active")], "short", w=8)

    d.row("Browsers and leaks")
    d.timeseries("Active browsers vs sidecar trees", "Browsers the runner holds against browser trees the sidecar in the same pod sees: a lasting gap is browsers nobody owns (alert LeakwardenBrowsersWithoutSession).",
                 [(f"sum(leakwarden_runner_active_browsers{{{S}}})", "runner: active browsers"),
                  (f"sum(leakwarden_trees{{{POD}}})", "sidecar: browser trees"),
                  (f"sum(leakwarden_orphan_trees{{{POD}}})", "sidecar: orphaned trees")], "short")
    d.timeseries("Cleanup leaks", "Leftovers found by the runner's cleanup verification, per interval.",
                 [(f"sum(increase(leakwarden_runner_cleanup_leaks_total{{{S}}}[$__rate_interval]))", "leaks")], "short")
    d.timeseries("Circuit state", "Launch circuit breaker over time (0 closed, 1 half-open, 2 open).",
                 [(f"max by (instance) (leakwarden_runner_circuit_state{{{S}}})", "{{instance}}")], "none", mappings=CIRCUIT)
    d.timeseries("Launch failures and admission rejections", "Failed browser launches and sessions refused admission (by reason: concurrency, memory) per second.",
                 [(f"sum(rate(leakwarden_runner_launch_failures_total{{{S}}}[$__rate_interval]))", "launch failures"),
                  (f"sum by (reason) (rate(leakwarden_runner_admission_rejections_total{{{S}}}[$__rate_interval]))", "rejected: {{reason}}")], "ops")
    d.timeseries("Faults injected", "Faults the runner injected on purpose (--fault), per second.",
                 [(f"sum by (fault) (rate(leakwarden_runner_faults_injected_total{{{S}}}[$__rate_interval]))", "{{fault}}")], "ops", w=8)

    d.row("The runner itself")
    d.timeseries("Tasks alive", "Tokio tasks alive: bounded when every task is owned.",
                 [(f"sum by (instance) (leakwarden_runner_tasks_alive{{{S}}})", "{{instance}}")], "short", w=8)
    d.timeseries("Memory", "The runner's own RSS (its browsers are separate processes).",
                 [(f"process_resident_memory_bytes{{{RJ}}}", "{{instance}}")], "bytes", w=8)
    d.timeseries("Open FDs", "The runner's own open file descriptors: flat when sessions close cleanly.",
                 [(f"process_open_fds{{{RJ}}}", "{{instance}}")], "short", w=8)

    return dashboard(
        "leakwarden-runner",
        "leakwarden / Runner",
        "Browser sessions run by leakwarden-runner: outcomes, durations, browsers held, cleanup leaks.",
        "leakwarden_runner_build_info",
        d,
    )


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, board in (("leakwarden-sidecar.json", sidecar()), ("leakwarden-runner.json", runner())):
        text = json.dumps(board, indent=2) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 dashboards/generate.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
