"""The recording and alerting rules, in the monitoring-mixin style: PascalCase names with the
Leakwarden prefix, `severity` the only label, summary / description / runbook_url annotations,
one runbook section per alert (alerts/runbook.md).

Alerts on a sidecar's own gauges keep every target label (job, instance, namespace, pod, node,
and family where there is one). Where a rule aggregates, it aggregates `by (cluster, namespace,
pod, node, instance)` (mixin/config.yaml: cluster_label, pod_labels, extra_group_labels), never
`without`, so recorded series and alerts carry the same labels whatever the scrape adds.
A recording rule that an alert reads sits in the alert's group, before it: the rules of one group
are evaluated in order, groups concurrently.
"""
from lib import duration_seconds, sel, where, words, words_seconds

# Kill decisions that are attempts to kill (not skipped, dry_run, rate_limited or protected).
ATTEMPTS = 'outcome=~"killed|terminated|failed"'
FAILED = 'outcome="failed"'
RATE_LIMITED = 'outcome="rate_limited"'
DENIED = 'reason="permission_denied"'
FDS_UNREADABLE = 'reason="fds_unreadable"'
SESSION_FAILED = 'outcome=~"failed|timeout"'
SESSION_FINISHED = 'outcome=~"ok|failed|timeout"'


class Rules:
    def __init__(self, cfg):
        self.cfg = cfg
        self.where = where(cfg)

    def alert(self, name, expr, summary, description):
        a = self.cfg.alert(name)
        return {
            "alert": name,
            "expr": expr,
            "for": a["for"],
            "labels": {"severity": a["severity"]},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": f"{self.cfg.runbook}#{name.lower()}",
            },
        }

    def groups(self):
        return [
            {"name": "leakwarden.sidecar", "rules": self.sidecar()},
            {"name": "leakwarden.runner", "rules": self.runner()},
        ]

    # === sidecar ===

    def sidecar(self):
        c, w, S = self.cfg, self.where, self.cfg.sidecar
        A = c.alert
        kill_failures = f"{c.level()}:leakwarden_kill_failures:ratio_rate5m"
        rules = [
            # Share of attempted kills that failed (EPERM without CAP_KILL, a process that would
            # not die). Skipped, dry-run, rate-limited and protected decisions are not attempts.
            {
                "record": kill_failures,
                "expr": (
                    f'sum {c.by()} (rate(leakwarden_kills_total{sel(S, FAILED)}[5m]))\n'
                    "  /\n"
                    f"sum {c.by()} (rate(leakwarden_kills_total{sel(S, ATTEMPTS)}[5m]))\n"
                ),
            },
            # The default policy kills an orphaned tree after 30s; orphans still there after the
            # `for:` mean the policy only reports (dry run, action: report) or kills fail.
            self.alert(
                "LeakwardenOrphanedBrowsers",
                f"leakwarden_orphan_processes{sel(S)} > 0",
                "Orphaned browser processes are running.",
                f"{{{{ $value }}}} orphaned {{{{ $labels.family }}}} processes (whose launcher is gone) "
                f"have been running in {w} for more than {words(A('LeakwardenOrphanedBrowsers')['for'])}.",
            ),
            # Net growth over every window for another window: something keeps abandoning
            # browsers faster than the policy removes them.
            self.alert(
                "LeakwardenOrphansGrowing",
                f"delta(leakwarden_orphan_processes{sel(S)}[{A('LeakwardenOrphansGrowing')['window']}]) > 0\n"
                f"and\nleakwarden_orphan_processes{sel(S)} > 0\n",
                "The number of orphaned browser processes keeps growing.",
                f"Orphaned {{{{ $labels.family }}}} processes in {w} have grown by {{{{ $value | humanize }}}} "
                f"over the last {words(A('LeakwardenOrphansGrowing')['window'])}, and have kept growing "
                "for "
                + words_seconds(duration_seconds(A("LeakwardenOrphansGrowing")["window"])
                                + duration_seconds(A("LeakwardenOrphansGrowing")["for"]))
                + ".",
            ),
            self.alert(
                "LeakwardenKillsFailing",
                f"{kill_failures} > {A('LeakwardenKillsFailing')['ratio']}",
                "leakwarden cannot kill what its policy tells it to.",
                f"{{{{ $value | humanizePercentage }}}} of the kills leakwarden attempted in {w} failed "
                "over the last 5 minutes.",
            ),
            # max_kills_per_minute held kills back in every window for the whole `for:`: the
            # policy is behind (a mass leak, or a rule that matches too much).
            self.alert(
                "LeakwardenKillsRateLimited",
                f"sum {c.by()} (increase(leakwarden_kills_total{sel(S, RATE_LIMITED)}"
                f"[{A('LeakwardenKillsRateLimited')['window']}])) > 0",
                "leakwarden's kill rate limit is holding back its policy.",
                f"leakwarden in {w} postponed {{{{ $value | humanize }}}} kill(s) in the last "
                f"{words(A('LeakwardenKillsRateLimited')['window'])} because max_kills_per_minute was spent, "
                f"and has for {words(A('LeakwardenKillsRateLimited')['for'])}.",
            ),
            # The sidecar's own verdict: a robust slope with a significant trend over its window.
            self.alert(
                "LeakwardenLeakSuspected",
                f"leakwarden_leak_suspects{sel(S)} > 0",
                "A process family is leaking.",
                f"leakwarden in {w} judges {{{{ $value }}}} {{{{ $labels.family }}}} process(es) to be "
                "leaking {{ $labels.resource }}"
                + self._time_to_limit("%q", "$labels.resource")
                .replace("PREFIX", "; at this rate the first reaches its limit in")
                + ".",
            ),
            # Prometheus's own projection, independent of the sidecar's detector: at the last
            # hour's rate the family's RSS doubles within the horizon. Small families are ignored
            # (a few browsers starting is growth, not a leak).
            self.alert(
                "LeakwardenFamilyMemoryGrowing",
                f"predict_linear(leakwarden_family_resident_memory_bytes{sel(S)}[1h], "
                f"{A('LeakwardenFamilyMemoryGrowing')['horizon_hours']} * 3600)\n"
                f"  > 2 * leakwarden_family_resident_memory_bytes{sel(S)}\n"
                f"and\nleakwarden_family_resident_memory_bytes{sel(S)} > "
                f"{A('LeakwardenFamilyMemoryGrowing')['min_bytes']}\n",
                f"A process family's memory is projected to double within "
                f"{A('LeakwardenFamilyMemoryGrowing')['horizon_hours']} hours.",
                f"The resident memory of {{{{ $labels.family }}}} processes in {w} has grown steadily for "
                "an hour; at that rate it reaches {{ $value | humanize1024 }}B in "
                f"{A('LeakwardenFamilyMemoryGrowing')['horizon_hours']} hours"
                + self._time_to_limit('\\"memory\\"').replace(
                    "PREFIX", ", and leakwarden projects the memory limit in")
                + ".",
            ),
            # The highest open-FDs / soft RLIMIT_NOFILE ratio of a family reaches 1 (EMFILE)
            # within the horizon at the last hour's rate.
            self.alert(
                "LeakwardenFdsProjectedExhausted",
                f"predict_linear(leakwarden_fd_limit_ratio_max{sel(S)}[1h], "
                f"{A('LeakwardenFdsProjectedExhausted')['horizon_hours']} * 3600) >= 1\n"
                f"and\nleakwarden_fd_limit_ratio_max{sel(S)} > "
                f"{A('LeakwardenFdsProjectedExhausted')['min_ratio']}\n",
                f"A process is projected to run out of file descriptors within "
                f"{A('LeakwardenFdsProjectedExhausted')['horizon_hours']} hours.",
                f"A {{{{ $labels.family }}}} process in {w} holds open file descriptors at a growing "
                "share of its RLIMIT_NOFILE; at the last hour's rate it reaches "
                "{{ $value | humanizePercentage }} of the limit in "
                f"{A('LeakwardenFdsProjectedExhausted')['horizon_hours']} hours"
                + self._time_to_limit('\\"fds\\"').replace("PREFIX", "; leakwarden projects the limit in")
                + ".",
            ),
            self.alert(
                "LeakwardenFdsNearLimit",
                f"leakwarden_fd_limit_ratio_max{sel(S)} > {A('LeakwardenFdsNearLimit')['ratio']}",
                "A process is close to its file-descriptor limit.",
                f"A {{{{ $labels.family }}}} process in {w} has used {{{{ $value | humanizePercentage }}}} "
                f"of its RLIMIT_NOFILE for {words(A('LeakwardenFdsNearLimit')['for'])}; it will fail "
                'with "Too many open files" soon.',
            ),
            # A healthy parent reaps a zombie in milliseconds: many for long means a parent that
            # does not wait() (the zombie-parent rule reports or kills it).
            self.alert(
                "LeakwardenZombiesAccumulating",
                f"leakwarden_zombie_processes{sel(S)} > {A('LeakwardenZombiesAccumulating')['zombies']}",
                "Zombie processes are accumulating.",
                f"{{{{ $value }}}} zombie processes have been waiting to be reaped in {w} for more than "
                f"{words(A('LeakwardenZombiesAccumulating')['for'])}.",
            ),
            self.alert(
                "LeakwardenStaleProfileDirs",
                f"leakwarden_stale_profile_dirs{sel(S)} > {A('LeakwardenStaleProfileDirs')['dirs']}",
                "Browser profile directories are piling up.",
                f"{{{{ $value }}}} browser profile or temp directories that no live process uses are on "
                f"disk in {w}.",
            ),
            # Removal keeps failing (another uid's directory without CAP_DAC_OVERRIDE, a read-only
            # or full filesystem): the disk fills although the policy says remove.
            self.alert(
                "LeakwardenStaleDirRemovalsFailing",
                f"sum {c.by()} (increase(leakwarden_stale_dirs_removed_total{sel(S, FAILED)}"
                f"[{A('LeakwardenStaleDirRemovalsFailing')['window']}])) > 0",
                "leakwarden cannot remove stale profile directories.",
                f"leakwarden in {w} failed to remove {{{{ $value | humanize }}}} stale profile "
                f"director(ies) in the last {words(A('LeakwardenStaleDirRemovalsFailing')['window'])}, "
                f"and has kept failing for {words(A('LeakwardenStaleDirRemovalsFailing')['for'])}.",
            ),
            # Enforcement going blind: processes the sidecar cannot read at all (a /proc mounted
            # with hidepid, another uid without the capabilities) are never judged or killed.
            self.alert(
                "LeakwardenProcessesUnreadable",
                f"sum {c.by()} (rate(leakwarden_skipped_processes_total{sel(S, DENIED)}"
                f"[{A('LeakwardenProcessesUnreadable')['window']}])) > 0",
                "leakwarden cannot read some processes and does not judge them.",
                f"leakwarden in {w} has been denied access to processes for "
                f"{words(A('LeakwardenProcessesUnreadable')['for'])} ({{{{ $value | humanize }}}} "
                "skipped per second): orphans and leaks among them go unseen.",
            ),
            # FD counts unknown (another uid's fd/ without CAP_SYS_PTRACE, or Chromium's
            # non-dumpable sandboxed processes in the same-uid `restricted` mode): FD leak detection
            # is off for those processes. Expected in that mode, hence info.
            self.alert(
                "LeakwardenFdCountsUnreadable",
                f"sum {c.by()} (rate(leakwarden_skipped_processes_total{sel(S, FDS_UNREADABLE)}"
                f"[{A('LeakwardenFdCountsUnreadable')['window']}])) > 0",
                "leakwarden cannot count some processes' file descriptors.",
                f"leakwarden in {w} has not been able to read the open file descriptors of some "
                f"processes for {words(A('LeakwardenFdCountsUnreadable')['for'])} "
                "({{ $value | humanize }} per second): FD leak detection is off for them.",
            ),
            self.alert(
                "LeakwardenPolicyReloadFailed",
                f"leakwarden_policy_last_reload_success{sel(S)} == 0",
                "leakwarden rejected its new policy.",
                f"The last policy reload in {w} failed; the previous policy is still in force.",
            ),
            # One target down is a warning (the mixins' convention): nothing there watches for
            # orphans, but nothing breaks either.
            self.alert(
                "LeakwardenSidecarDown",
                f"up{sel(S)} == 0",
                "leakwarden cannot be scraped.",
                f"Prometheus has failed to scrape leakwarden in {w} for "
                f"{words(A('LeakwardenSidecarDown')['for'])}: nothing there is watching for orphaned "
                "or leaking browsers.",
            ),
            self.alert(
                "LeakwardenSidecarAbsent",
                f"absent(up{sel(S)})",
                "No leakwarden target is known to Prometheus.",
                f"No target with {S} has been discovered for "
                f"{words(A('LeakwardenSidecarAbsent')['for'])}; the PodMonitor, ServiceMonitor or "
                "scrape configuration may be broken.",
            ),
            self.alert(
                "LeakwardenScansFailing",
                f"sum {c.by()} (rate(leakwarden_scan_failures_total{sel(S)}[5m]))\n  /\n"
                f"sum {c.by()} (rate(leakwarden_scans_total{sel(S)}[5m]))\n"
                f"  > {A('LeakwardenScansFailing')['ratio']}\n",
                "leakwarden's /proc scans are failing.",
                f"{{{{ $value | humanizePercentage }}}} of leakwarden's scans in {w} failed over the "
                "last 5 minutes.",
            ),
            self.alert(
                "LeakwardenScansStale",
                f"time() - leakwarden_last_scan_timestamp_seconds{sel(S)} > "
                f"{A('LeakwardenScansStale')['seconds']}",
                "leakwarden has stopped scanning.",
                f"leakwarden in {w} last completed a scan {{{{ $value | humanizeDuration }}}} ago; its "
                "metrics no longer describe the host.",
            ),
        ]
        return rules

    def _time_to_limit(self, resource_fmt, resource_arg=""):
        """` PREFIX <time>` from leakwarden_leak_time_to_limit_seconds of the alert's target, or
        nothing when there is no projection. PREFIX is replaced by the caller."""
        args = "$labels.instance $labels.job $labels.family" + (f" {resource_arg}" if resource_arg else "")
        return (
            '{{ with printf "leakwarden_leak_time_to_limit_seconds{instance=%q,job=%q,family=%q,'
            f'resource={resource_fmt}}}" {args} | query }}}}'
            "{{ with first . }}PREFIX {{ value . | humanizeDuration }}{{ end }}{{ end }}"
        )

    # === runner ===

    def runner(self):
        c, w, R, S = self.cfg, self.where, self.cfg.runner, self.cfg.sidecar
        A = c.alert
        failures = f"{c.level()}:leakwarden_runner_session_failures:ratio_rate5m"
        without_session = f"{c.level()}:leakwarden_browser_trees_without_session:sum"
        grace = A("LeakwardenBrowsersWithoutSession")["runner_gone_grace"]
        cl = c.raw.get("cluster_label")
        by_cluster = f"by ({cl}) " if cl else ""
        in_cluster = f"{{{{ with $labels.{cl} }}}} in cluster {{{{ . }}}}{{{{ end }}}}" if cl else ""
        return [
            # Share of finished sessions that failed or timed out (retries and cancellations are
            # not final outcomes of a session's work).
            {
                "record": failures,
                "expr": (
                    f'sum {c.by()} (rate(leakwarden_runner_sessions_total{sel(R, SESSION_FAILED)}[5m]))\n'
                    "  /\n"
                    f'sum {c.by()} (rate(leakwarden_runner_sessions_total{sel(R, SESSION_FINISHED)}[5m]))\n'
                ),
            },
            # Browser trees the sidecar sees minus browsers the runner says it holds, per pod: the
            # two are different targets, so the join is on what they share (cluster, namespace,
            # pod; on a single host nothing, and both sum to one series). A runner that went away
            # counts as holding none for a grace period after its last scrape — otherwise the
            # difference would vanish with it while its abandoned browsers run on. Where no
            # runner ever ran, nothing is recorded.
            {
                "record": without_session,
                "expr": (
                    f"sum {c.by_pod()} (leakwarden_trees{sel(S)})\n"
                    "  -\n(\n"
                    f"  sum {c.by_pod()} (leakwarden_runner_active_browsers{sel(R)})\n"
                    "    or\n"
                    f"  sum {c.by_pod()} (last_over_time(leakwarden_runner_active_browsers{sel(R)}[{grace}])) * 0\n"
                    ")\n"
                ),
            },
            # Every leftover the runner's /proc verification finds is a bug worth a look: no
            # threshold, only a short `for:` against scrape noise.
            self.alert(
                "LeakwardenRunnerCleanupLeaks",
                f"sum {c.by()} (increase(leakwarden_runner_cleanup_leaks_total{sel(R)}"
                f"[{A('LeakwardenRunnerCleanupLeaks')['window']}])) > 0",
                "The runner's session cleanup is leaving processes or directories behind.",
                f"leakwarden-runner in {w} found {{{{ $value | humanize }}}} leftover(s) after closing "
                f"sessions in the last {words(A('LeakwardenRunnerCleanupLeaks')['window'])}.",
            ),
            self.alert(
                "LeakwardenRunnerSessionFailures",
                f"{failures} > {A('LeakwardenRunnerSessionFailures')['ratio']}",
                "Many browser sessions are failing.",
                f"{{{{ $value | humanizePercentage }}}} of the sessions leakwarden-runner in {w} finished "
                "in the last 5 minutes failed or timed out.",
            ),
            self.alert(
                "LeakwardenRunnerCircuitOpen",
                f"leakwarden_runner_circuit_state{sel(R)} == 2",
                "The runner stopped launching browsers.",
                f"leakwarden-runner in {w} has kept its launch circuit breaker open for "
                f"{words(A('LeakwardenRunnerCircuitOpen')['for'])}: browser launches keep failing.",
            ),
            self.alert(
                "LeakwardenRunnerDown",
                f"up{sel(R)} == 0",
                "leakwarden-runner cannot be scraped.",
                f"Prometheus has failed to scrape leakwarden-runner in {w} for "
                f"{words(A('LeakwardenRunnerDown')['for'])}: its sessions, browsers and cleanup "
                "leaks are unknown.",
            ),
            # The runner is optional (a node-only install has none), so `absent()` would fire
            # forever there. Instead: runners were scraped within `seen_within`, and none is now —
            # per cluster, which absent() cannot do. It resolves when a runner is back, or
            # `seen_within` after the last one went.
            self.alert(
                "LeakwardenRunnerAbsent",
                f"count {by_cluster}(last_over_time(up{sel(R)}[{A('LeakwardenRunnerAbsent')['seen_within']}]))\n"
                f"unless\ncount {by_cluster}(up{sel(R)})\n",
                "leakwarden-runner targets have disappeared.",
                f"No target with {R} has been discovered for "
                f"{words(A('LeakwardenRunnerAbsent')['for'])}, though there were some within the last "
                f"{words(A('LeakwardenRunnerAbsent')['seen_within'])}{in_cluster}; the PodMonitor or "
                "scrape configuration may be broken, or the runners were removed.",
            ),
            # More browser trees than the runner holds, sustained: the runner (or a bot in the
            # same pod) lost track of browsers it started. Short blips happen while a session
            # closes (the runner forgets the browser before the sidecar's next scan).
            self.alert(
                "LeakwardenBrowsersWithoutSession",
                f"{without_session} > 0",
                "More browsers are running than the runner knows about.",
                "{{ with $labels.pod }}In pod {{ $labels.namespace }}/{{ . }}, {{ end }}leakwarden sees "
                "{{ $value }} more browser tree(s) than leakwarden-runner holds browsers, for more than "
                f"{words(A('LeakwardenBrowsersWithoutSession')['for'])}.",
            ),
        ]
