"""The Grafana dashboards, built with Grafana's own Python SDK (grafana-foundation-sdk): typed
builders for panels, queries and variables, so a misspelt option is an error here, not a panel
that silently renders wrong in Grafana.

Every panel has a unit and a description and queries through the `datasource` variable; the
`cluster`, `namespace`, `pod` and `instance` variables come from the scrape's target labels and
default to All (`.*`, which also matches series without the label, e.g. a systemd host). Every
series the sidecar and the runner export is on some panel (tests/tests/ops_dashboards.rs checks it
against the programs' real /metrics).
"""
import json

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat as sb
from grafana_foundation_sdk.builders import timeseries as tb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

# Grafana 10.3+ (the SDK's default, 36, makes Grafana migrate the dashboard on every load).
SCHEMA_VERSION = 39
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


def value_map(pairs):
    """[(value, text, color)] → one value mapping."""
    return [dm.ValueMap(options={str(v): dm.ValueMappingResult(text=t, color=c, index=i)
                                 for i, (v, t, c) in enumerate(pairs)})]


DRY_RUN = value_map([(0, "enforcing", "green"), (1, "dry run", "orange")])
RELOAD = value_map([(0, "failed", "red"), (1, "ok", "green")])
CIRCUIT = value_map([(0, "closed", "green"), (1, "half-open", "orange"), (2, "open", "red")])


class Board:
    """Panels in reading order; the SDK places them on Grafana's 24-column grid."""

    def __init__(self, cfg, uid, title, description, build_info):
        self.cfg = cfg
        d = cfg.dashboards
        self.refs = 0
        self.b = (
            db.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(d["tags"])
            .refresh(d["refresh"])
            .time(d["time_from"], "now")
            .timezone("")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("leakwarden dashboards").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(d["tags"]).include_vars(True).keep_time(True).as_dropdown(False))
        )
        self._variables(build_info)

    def _variables(self, build_info):
        self.b.with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        cl = self.cfg.raw.get("cluster_label")
        chain = ([(cl, "Cluster")] if cl else []) + [("namespace", "Namespace"), ("pod", "Pod"),
                                                      ("instance", "Instance")]
        # Each narrows the next: cluster → namespace → pod → instance.
        before = []
        for label, text in chain:
            filt = ", ".join(f'{b}=~"${b}"' for b in before)
            query = f"label_values({build_info}{{{filt}}}, {label})" if filt else f"label_values({build_info}, {label})"
            self.b.with_variable(
                db.QueryVariable(label).label(text).datasource(DS).query(query)
                .include_all(True).all_value(".*").multi(True)
                .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            )
            before.append(label)
        self.filter = ", ".join(f'{b}=~"${b}"' for b in before)

    def _target(self, expr, legend="", instant=False):
        self.refs += 1
        q = pb.Dataquery().expr(expr).ref_id(chr(ord("A") + (self.refs - 1) % 26)).datasource(DS)
        q = q.editor_mode("code").legend_format(legend)
        return q.instant() if instant else q.range()

    def row(self, title):
        self.b.with_row(db.Row(title))

    def stat(self, title, description, expr, unit, w=4, thresholds=(), mappings=None, legend=""):
        self.refs = 0
        steps = [dm.Threshold(value=None, color="green")] + [dm.Threshold(value=v, color=c) for v, c in thresholds]
        p = (
            sb.Panel().title(title).description(description).datasource(DS).unit(unit).span(w).height(4)
            .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
            .with_target(self._target(expr, legend, instant=True))
        )
        if mappings:
            p = p.mappings(mappings)
        self.b.with_panel(p)

    def ts(self, title, description, queries, unit, w=12, h=8, stack=False, mappings=None):
        self.refs = 0
        p = (
            tb.Panel().title(title).description(description).datasource(DS).unit(unit).min(0).span(w).height(h)
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
            .line_width(1).fill_opacity(10).show_points(cm.VisibilityMode.NEVER).span_nulls(False)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE).group("A"))
            .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                    .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
            .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        )
        for expr, legend in queries:
            p = p.with_target(self._target(expr, legend))
        if mappings:
            p = p.mappings(mappings)
        self.b.with_panel(p)

    def build(self):
        m = self.b.build()
        m.schema_version = SCHEMA_VERSION
        m.version = 1
        # Stable ids in reading order (Grafana keys panel links and repeats on them).
        for i, p in enumerate(m.panels or [], start=1):
            p.id_val = i
        return json.loads(json.dumps(m, cls=JSONEncoder))


def histogram(metric, sel, qs=(0.5, 0.95)):
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[$__rate_interval])))",
             f"p{int(q * 100)}") for q in qs]


def sidecar(cfg):
    d = Board(cfg, f"{cfg.dashboards['uid_prefix']}-sidecar", "leakwarden / Sidecar",
              "Orphaned and leaking browser process trees as leakwarden sees them, and what it killed.",
              "leakwarden_build_info")
    S = d.filter
    SJ = f"{cfg.sidecar}, {S}"  # process_* and up are every exporter's: those carry the job

    # A DaemonSet sidecar knows the pod UID; kube-state-metrics' kube_pod_info knows the name.
    # Join when it is there, fall back to the bare UID when it is not.
    def by_pod(metric):
        own = f"sum by (pod_uid) ({metric}{{{S}}})"
        named = (f"{own} * on (pod_uid) group_left (namespace, pod) max by (pod_uid, namespace, pod) "
                 '(label_replace(kube_pod_info, "pod_uid", "$1", "uid", "(.+)"))')
        return f"topk(10, ({named}) or ({own} unless on (pod_uid) ({named})))"

    d.row("Overview")
    d.stat("Policy", "Whether the sidecars enforce or only report (leakwarden_policy_dry_run: 1 while nothing is signalled or removed, by --dry-run or the policy's dry_run). The worst of the selected sidecars.",
           f"max(leakwarden_policy_dry_run{{{S}}})", "none", thresholds=[(1, "orange")], mappings=DRY_RUN)
    d.stat("Orphaned processes", "Family processes whose launcher is gone (leakwarden_orphan_processes), all families.",
           f"sum(leakwarden_orphan_processes{{{S}}})", "short", thresholds=[(1, "red")])
    d.stat("Orphaned trees", "Browser trees whose owner is gone (leakwarden_orphan_trees).",
           f"sum(leakwarden_orphan_trees{{{S}}})", "short", thresholds=[(1, "red")])
    d.stat("Oldest orphan", "Age of the oldest orphaned process (leakwarden_oldest_orphan_age_seconds): above the policy's orphaned_for means it is not being killed.",
           f"max(leakwarden_oldest_orphan_age_seconds{{{S}}})", "s", thresholds=[(60, "orange"), (300, "red")])
    d.stat("Kills (1h)", "Processes and trees killed or terminated by policy in the last hour.",
           f'sum(increase(leakwarden_kills_total{{{S}, outcome=~"killed|terminated"}}[1h]))', "short")
    d.stat("Stale profile dirs", "Browser profile and temp directories no live process uses (leakwarden_stale_profile_dirs).",
           f"sum(leakwarden_stale_profile_dirs{{{S}}})", "short", thresholds=[(50, "orange")])

    d.row("Processes by family")
    d.ts("Processes", "Live processes per family (leakwarden_processes) and browser trees (leakwarden_trees).",
         [(f"sum by (family) (leakwarden_processes{{{S}}})", "{{family}} processes"),
          (f"sum by (family) (leakwarden_trees{{{S}}})", "{{family}} trees")], "short")
    d.ts("Orphans", "Orphaned processes and trees per family.",
         [(f"sum by (family) (leakwarden_orphan_processes{{{S}}})", "{{family}} processes"),
          (f"sum by (family) (leakwarden_orphan_trees{{{S}}})", "{{family}} trees")], "short")
    d.ts("Resident memory", "RSS summed over each family's processes (leakwarden_family_resident_memory_bytes).",
         [(f"sum by (family) (leakwarden_family_resident_memory_bytes{{{S}}})", "{{family}}")], "bytes")
    d.ts("Open file descriptors", "Open FDs summed over each family's processes (leakwarden_family_open_fds).",
         [(f"sum by (family) (leakwarden_family_open_fds{{{S}}})", "{{family}}")], "short")
    d.ts("Threads", "Threads summed over each family's processes (leakwarden_family_threads).",
         [(f"sum by (family) (leakwarden_family_threads{{{S}}})", "{{family}}")], "short")
    d.ts("FD limit use (worst process)", "Highest open FDs / soft RLIMIT_NOFILE in each family (leakwarden_fd_limit_ratio_max); EMFILE at 100%.",
         [(f"max by (family) (leakwarden_fd_limit_ratio_max{{{S}}})", "{{family}}")], "percentunit")

    d.row("Leaks")
    d.ts("Leak suspects", "Processes the leak detector judges to be growing, per family and resource (leakwarden_leak_suspects), and families whose total grows (leakwarden_family_growing).",
         [(f"sum by (family, resource) (leakwarden_leak_suspects{{{S}}})", "{{family}} {{resource}} suspects"),
          (f"sum by (family, resource) (leakwarden_family_growing{{{S}}})", "{{family}} {{resource}} family growing")], "short", w=8)
    d.ts("Projected time to limit", "Time until the first leaking process of a family reaches its limit at the current slope (leakwarden_leak_time_to_limit_seconds).",
         [(f"min by (family, resource) (leakwarden_leak_time_to_limit_seconds{{{S}}})", "{{family}} {{resource}}")], "s", w=8)
    d.ts("Zombies", "Zombie processes waiting to be reaped (leakwarden_zombie_processes), and zombies passed to their reaper by killing a parent that does not wait() (leakwarden_zombies_reaped_total).",
         [(f"sum(leakwarden_zombie_processes{{{S}}})", "zombies"),
          (f"sum(increase(leakwarden_zombies_reaped_total{{{S}}}[$__rate_interval]))", "reaped")], "short", w=8)

    d.row("Enforcement")
    d.ts("Kills by outcome", "Kill decisions per second by outcome (leakwarden_kills_total): killed, terminated, skipped, dry_run, rate_limited, failed, protected.",
         [(f"sum by (outcome) (rate(leakwarden_kills_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "ops", stack=True)
    d.ts("Kills by rule", "Kill decisions per second by policy rule.",
         [(f"sum by (rule) (rate(leakwarden_kills_total{{{S}}}[$__rate_interval]))", "{{rule}}")], "ops", stack=True)
    d.ts("Stale directories", "Stale profile directories found (leakwarden_stale_profile_dirs) and removals per interval by outcome (leakwarden_stale_dirs_removed_total: removed, failed).",
         [(f"sum(leakwarden_stale_profile_dirs{{{S}}})", "stale"),
          (f"sum by (outcome) (increase(leakwarden_stale_dirs_removed_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "short", w=8)
    d.ts("Processes not read", "Processes skipped per second by reason (leakwarden_skipped_processes_total); permission_denied and fds_unreadable mean blind spots (alerts LeakwardenProcessesUnreadable, LeakwardenFdCountsUnreadable).",
         [(f"sum by (reason) (rate(leakwarden_skipped_processes_total{{{S}}}[$__rate_interval]))", "{{reason}}")], "ops", w=8)
    d.ts("Dry run by sidecar", "leakwarden_policy_dry_run per sidecar: 1 while it only reports.",
         [(f"max by (namespace, pod, instance) (leakwarden_policy_dry_run{{{S}}})", "{{namespace}}/{{pod}} {{instance}}")],
         "none", w=8, mappings=DRY_RUN)

    d.row("Pods (DaemonSet mode)")
    d.ts("Orphaned processes by pod", "Orphaned processes attributed to pods by cgroup path (leakwarden_pod_orphan_processes); names from kube-state-metrics when present.",
         [(by_pod("leakwarden_pod_orphan_processes"), "{{namespace}}/{{pod}} {{pod_uid}}")], "short", w=8)
    d.ts("Family processes by pod", "Family processes attributed to pods by cgroup path (leakwarden_pod_processes).",
         [(by_pod("leakwarden_pod_processes"), "{{namespace}}/{{pod}} {{pod_uid}}")], "short", w=8)
    d.ts("Browser memory by pod", "RSS of family processes per pod (leakwarden_pod_resident_memory_bytes).",
         [(by_pod("leakwarden_pod_resident_memory_bytes"), "{{namespace}}/{{pod}} {{pod_uid}}")], "bytes", w=8)

    d.row("The sidecar itself")
    d.ts("Scan duration", "Time one /proc scan takes (leakwarden_scan_duration_seconds).",
         histogram("leakwarden_scan_duration_seconds", S, (0.5, 0.95, 0.99)), "s", w=8)
    d.ts("Scans", "Scans and failed scans per second, and runs left behind past their deadline by task (leakwarden_deadline_exceeded_total).",
         [(f"sum(rate(leakwarden_scans_total{{{S}}}[$__rate_interval]))", "scans"),
          (f"sum(rate(leakwarden_scan_failures_total{{{S}}}[$__rate_interval]))", "failures"),
          (f"sum by (task) (rate(leakwarden_deadline_exceeded_total{{{S}}}[$__rate_interval]))", "deadline exceeded: {{task}}")], "ops", w=8)
    d.ts("Time since last scan", "Seconds since the last completed scan (leakwarden_last_scan_timestamp_seconds).",
         [(f"time() - max by (instance) (leakwarden_last_scan_timestamp_seconds{{{S}}})", "{{instance}}")], "s", w=8)
    d.ts("Owners watched", "Tree owners held by a pidfd, whose exit triggers a rescan at once (leakwarden_owners_watched), and owners left for the next scan because the pidfd budget is spent (leakwarden_owners_unwatched).",
         [(f"sum(leakwarden_owners_watched{{{S}}})", "watched"),
          (f"sum(leakwarden_owners_unwatched{{{S}}})", "unwatched")], "short", w=8)
    d.ts("HTTP connections", "Connections the metrics/probe server holds open (leakwarden_http_connections_open), and per second: idle ones evicted at the cap, newcomers refused, failed accepts.",
         [(f"sum(leakwarden_http_connections_open{{{S}}})", "open"),
          (f"sum(rate(leakwarden_http_connections_evicted_total{{{S}}}[$__rate_interval]))", "evicted/s"),
          (f"sum(rate(leakwarden_http_connections_refused_total{{{S}}}[$__rate_interval]))", "refused/s"),
          (f"sum(rate(leakwarden_http_accept_errors_total{{{S}}}[$__rate_interval]))", "accept errors/s")], "short", w=8)
    d.ts("Policy reloads", "Policy reloads per interval by outcome (leakwarden_policy_reloads_total: success, rejected).",
         [(f"sum by (outcome) (increase(leakwarden_policy_reloads_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "short", w=8)
    d.ts("Memory", "The sidecar's own RSS: flat in steady state.",
         [(f"process_resident_memory_bytes{{{SJ}}}", "RSS {{instance}}")], "bytes", w=8)
    d.ts("Open FDs", "The sidecar's own open file descriptors: flat in steady state (it holds a pidfd per tree owner, no more).",
         [(f"process_open_fds{{{SJ}}}", "{{instance}}")], "short", w=8)
    d.ts("CPU", "The sidecar's own CPU use (1.0 = one core).",
         [(f"sum by (instance) (rate(process_cpu_seconds_total{{{SJ}}}[$__rate_interval]))", "{{instance}}")], "percentunit", w=8)
    d.stat("Policy reload", "Whether the last policy reload succeeded (leakwarden_policy_last_reload_success), the worst of the selected sidecars.",
           f"min(leakwarden_policy_last_reload_success{{{S}}})", "none", mappings=RELOAD, w=6)
    d.stat("Targets up", "Sidecar targets Prometheus scrapes successfully.",
           f"sum(up{{{SJ}}})", "short", w=6)
    d.stat("Versions", "Sidecars by version (leakwarden_build_info).",
           f"count by (version) (leakwarden_build_info{{{S}}})", "short", w=12, legend="{{version}}")
    return d.build()


def runner(cfg):
    d = Board(cfg, f"{cfg.dashboards['uid_prefix']}-runner", "leakwarden / Runner",
              "Browser sessions run by leakwarden-runner: outcomes, durations, browsers held, cleanup leaks.",
              "leakwarden_runner_build_info")
    S = d.filter
    RJ = f"{cfg.runner}, {S}"
    # The sidecar beside the runner shares its cluster, namespace and pod, not its instance.
    POD = ", ".join(f for f in S.split(", ") if not f.startswith("instance"))

    d.row("Overview")
    d.stat("Active sessions", "Sessions running now (leakwarden_runner_active_sessions).",
           f"sum(leakwarden_runner_active_sessions{{{S}}})", "short")
    d.stat("Active browsers", "Browsers the runner holds now (leakwarden_runner_active_browsers).",
           f"sum(leakwarden_runner_active_browsers{{{S}}})", "short")
    d.stat("Queue depth", "Sessions waiting for admission (leakwarden_runner_queue_depth).",
           f"sum(leakwarden_runner_queue_depth{{{S}}})", "short")
    d.stat("Circuit", "Launch circuit breaker: closed, half-open or open (leakwarden_runner_circuit_state).",
           f"max(leakwarden_runner_circuit_state{{{S}}})", "none", mappings=CIRCUIT, thresholds=[(1, "orange"), (2, "red")])
    d.stat("Cleanup leaks (1h)", "What the runner's /proc verification found left after closing sessions in the last hour.",
           f"sum(increase(leakwarden_runner_cleanup_leaks_total{{{S}}}[1h]))", "short", thresholds=[(1, "red")])
    d.stat("Tasks alive", "Tokio tasks alive in the runner (leakwarden_runner_tasks_alive): must stay bounded.",
           f"sum(leakwarden_runner_tasks_alive{{{S}}})", "short")

    d.row("Sessions")
    d.ts("Sessions by outcome", "Finished sessions per second by outcome (leakwarden_runner_sessions_total).",
         [(f"sum by (outcome) (rate(leakwarden_runner_sessions_total{{{S}}}[$__rate_interval]))", "{{outcome}}")], "ops", stack=True)
    d.ts("Session duration", "Session duration quantiles (leakwarden_runner_session_duration_seconds).",
         histogram("leakwarden_runner_session_duration_seconds", S), "s")
    d.ts("Launch duration", "Browser launch duration quantiles (leakwarden_runner_launch_duration_seconds).",
         histogram("leakwarden_runner_launch_duration_seconds", S), "s", w=8)
    d.ts("Cleanup duration", "Session close + verification duration quantiles (leakwarden_runner_cleanup_duration_seconds).",
         histogram("leakwarden_runner_cleanup_duration_seconds", S), "s", w=8)
    d.ts("Queue and concurrency", "Sessions waiting and running.",
         [(f"sum(leakwarden_runner_queue_depth{{{S}}})", "queued"),
          (f"sum(leakwarden_runner_active_sessions{{{S}}})", "active")], "short", w=8)

    d.row("Browsers and leaks")
    d.ts("Active browsers vs sidecar trees", "Browsers the runner holds against browser trees the sidecar in the same pod sees: a lasting gap is browsers nobody owns (alert LeakwardenBrowsersWithoutSession).",
         [(f"sum(leakwarden_runner_active_browsers{{{S}}})", "runner: active browsers"),
          (f"sum(leakwarden_trees{{{POD}}})", "sidecar: browser trees"),
          (f"sum(leakwarden_orphan_trees{{{POD}}})", "sidecar: orphaned trees")], "short")
    d.ts("Browsers launched", "Browsers launched per second (leakwarden_runner_browsers_launched_total) and failed launches (leakwarden_runner_launch_failures_total).",
         [(f"sum(rate(leakwarden_runner_browsers_launched_total{{{S}}}[$__rate_interval]))", "launched"),
          (f"sum(rate(leakwarden_runner_launch_failures_total{{{S}}}[$__rate_interval]))", "launch failures")], "ops")
    d.ts("Cleanup leaks and stale run directories", "Leftovers found by the runner's cleanup verification, cleanups it could not verify (leakwarden_runner_cleanup_unverified_total: a /proc it could not read, EMFILE say; each is also counted as a leak), and profile directories of earlier, dead runs removed at start (leakwarden_runner_stale_run_dirs_removed_total), per interval.",
         [(f"sum(increase(leakwarden_runner_cleanup_leaks_total{{{S}}}[$__rate_interval]))", "cleanup leaks"),
          (f"sum(increase(leakwarden_runner_cleanup_unverified_total{{{S}}}[$__rate_interval]))", "unverified cleanups"),
          (f"sum(increase(leakwarden_runner_stale_run_dirs_removed_total{{{S}}}[$__rate_interval]))", "stale run dirs removed")], "short", w=8)
    d.ts("Circuit state", "Launch circuit breaker over time (0 closed, 1 half-open, 2 open).",
         [(f"max by (instance) (leakwarden_runner_circuit_state{{{S}}})", "{{instance}}")], "none", mappings=CIRCUIT, w=8)
    d.ts("Admission rejections", "Browser launches postponed per second because the memory reserve did not fit (leakwarden_runner_admission_rejections_total, reason memory).",
         [(f"sum by (reason) (rate(leakwarden_runner_admission_rejections_total{{{S}}}[$__rate_interval]))", "{{reason}}")], "ops", w=8)
    d.ts("Faults injected", "Faults the runner injected on purpose (--fault), per second.",
         [(f"sum by (fault) (rate(leakwarden_runner_faults_injected_total{{{S}}}[$__rate_interval]))", "{{fault}}")], "ops", w=8)
    d.ts("Collateral restarts", "Session attempts run again on another browser without spending a retry, because their browser was lost to a cause not their own (leakwarden_runner_session_collateral_restarts_total: neighbour_fault = another session's injected fault, browser_died), per second.",
         [(f"sum by (cause) (rate(leakwarden_runner_session_collateral_restarts_total{{{S}}}[$__rate_interval]))", "{{cause}}")], "ops", w=8)

    d.row("Service (leakwarden-runner serve)")
    d.stat("Saturation", "Sessions running ÷ --max-sessions (leakwarden_runner_active_sessions / leakwarden_runner_sessions_max): at 1 new clients queue, then get 429.",
           f"sum(leakwarden_runner_active_sessions{{{S}}}) / sum(leakwarden_runner_sessions_max{{{S}}})", "percentunit", thresholds=[(0.8, "orange"), (1, "red")])
    d.stat("Queue limit", "--queue: connections that may wait for a slot (leakwarden_runner_queue_max).",
           f"sum(leakwarden_runner_queue_max{{{S}}})", "short")
    d.stat("Warm browsers", "Browsers launched ahead and waiting for a session (leakwarden_runner_pool_ready_browsers).",
           f"sum(leakwarden_runner_pool_ready_browsers{{{S}}})", "short")
    d.stat("Draining", "1 while the service drains after SIGTERM (leakwarden_runner_draining).",
           f"max(leakwarden_runner_draining{{{S}}})", "none", thresholds=[(1, "orange")])
    d.ts("Sessions ended by reason", "Service sessions ended per second, by how they ended (leakwarden_runner_sessions_ended_total: closed, disconnected, idle, timeout, killed, …).",
         [(f"sum by (reason) (rate(leakwarden_runner_sessions_ended_total{{{S}}}[$__rate_interval]))", "{{reason}}")], "ops", stack=True, w=8)
    d.ts("Connections rejected", "Connections that got no session, by reason (leakwarden_runner_sessions_rejected_total: queue_full → 429, queue_timeout, memory, draining, unauthorized).",
         [(f"sum by (reason) (rate(leakwarden_runner_sessions_rejected_total{{{S}}}[$__rate_interval]))", "{{reason}}")], "ops", w=8)
    d.ts("Warm and cold starts", "Sessions by how they got their browser: warm (launched ahead) or cold (waited for a launch) (leakwarden_runner_pool_starts_total).",
         [(f"sum by (kind) (rate(leakwarden_runner_pool_starts_total{{{S}}}[$__rate_interval]))", "{{kind}}")], "ops", w=8)
    d.ts("Wait for a session", "From a connection's arrival to its session's start (leakwarden_runner_session_queue_seconds).",
         histogram("leakwarden_runner_session_queue_seconds", S), "s", w=12)
    d.ts("CDP messages relayed", "Messages the service relays per second, by direction (leakwarden_runner_cdp_messages_total).",
         [(f"sum by (from) (rate(leakwarden_runner_cdp_messages_total{{{S}}}[$__rate_interval]))", "from {{from}}")], "ops", w=12)

    d.row("The runner itself")
    d.ts("Tasks alive", "Tokio tasks alive: bounded when every task is owned.",
         [(f"sum by (instance) (leakwarden_runner_tasks_alive{{{S}}})", "{{instance}}")], "short", w=8)
    d.ts("Memory", "The runner's own RSS (its browsers are separate processes).",
         [(f"process_resident_memory_bytes{{{RJ}}}", "{{instance}}")], "bytes", w=8)
    d.ts("Open FDs", "The runner's own open file descriptors: flat when sessions close cleanly.",
         [(f"process_open_fds{{{RJ}}}", "{{instance}}")], "short", w=8)
    d.stat("Targets up", "Runner targets Prometheus scrapes successfully.",
           f"sum(up{{{RJ}}})", "short", w=8)
    d.stat("Versions", "Runners by version (leakwarden_runner_build_info).",
           f"count by (version) (leakwarden_runner_build_info{{{S}}})", "short", w=16, legend="{{version}}")
    return d.build()


def boards(cfg):
    """(short name, dashboard JSON) pairs."""
    return [("sidecar", sidecar(cfg)), ("runner", runner(cfg))]
