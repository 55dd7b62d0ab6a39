#!/usr/bin/env bash
# Incident 5 — the service that leaked tasks and connections.
#
# The story: a Rust service spawned 49 kinds of tasks without keeping their handles and opened a
# new database connection per operation: FDs crept toward the 1,024 soft limit, threads grew.
# Replay: `db-service` opens a descriptor per operation and never closes it (50/s in the fast form,
# under RLIMIT_NOFILE 1024); `task-service` starts threads it never joins (10/s).
# Shown: an FD "growing" verdict with the projected time to RLIMIT_NOFILE (read from
# /proc/PID/limits); threads exported per family (leakwarden_family_threads) and judged as a leak
# resource too; the alerts LeakwardenLeakSuspected and LeakwardenFdsProjectedExhausted; the
# FD-ratio rule (fd_ratio_above 0.8, terminate) ending db-service before EMFILE, and a thread-leak
# rule ending task-service.
source "$(dirname "$0")/../lib.sh"

NOFILE=${NOFILE:-1024}
# write_policy ACTION — the policy, with ACTION for its two ending rules. The replay starts with
# `report` and arms `terminate` by a reload (SIGHUP) once the detection has been shown: with the
# rules armed from the start, a slow machine could end the services before the verdicts and the
# alerts the replay shows were seen. The leak itself stops 24 descriptors short of the limit
# (`--max 1000`), so however late the rule is armed, it is the rule that ends db-service.
write_policy() {
cat >"$W/policy.yaml" <<YAML
families:
  - name: db
    kind: generic
    match:
      - cmdline: 'marker=db-service'
  - name: tasks
    kind: generic
    match:
      - cmdline: 'marker=task-service'
rules:
  - name: fds-near-limit
    family: [db]
    when:
      fd_ratio_above: 0.8
    action: $1
    grace: 2s
  - name: thread-leak
    family: [tasks]
    when:
      leak: { resource: threads, for: 5s }
    action: $1
    grace: 2s
  - name: fd-leak
    family: [db]
    when:
      leak: { resource: fds, for: 1s }
    action: report
leak:
  window: 20s
  min_samples: 10
stale_profiles:
  roots: ['$W']
  older_than: 1s
YAML
}
write_policy report

banner "task-leak: a descriptor per operation, a thread per task, none ever released"
ns_start "$W/policy.yaml"
prom_start "leakwarden=$SIDECAR"

nsbg prlimit --nofile="$NOFILE:$NOFILE" -- "$FIXTURE" fds 10 --step 10 --every 200 --max 1000 --marker=db-service \
  >/dev/null 2>"$W/bin/db-service.stderr"
nsbg "$FIXTURE" threads 2 --step 2 --every 200 --marker=task-service >/dev/null 2>"$W/bin/task-service.stderr"
mark fault
DB= TASKS=
# By comm: until prlimit has set the limit and exec'd the fixture, the marker is prlimit's.
_up() {
  DB=$(ns_pid_of '^lw-fixture .*marker=db-service')
  TASKS=$(ns_pid_of '^lw-fixture .*marker=task-service')
  [[ -n $DB && -n $TASKS ]]
}
wait_until "both services" 10 _up
say "db-service pid $DB (RLIMIT_NOFILE $NOFILE), task-service pid $TASKS"
grep -E '^Max open files' "$(NSPROC)/$DB/limits" | sed 's/^/  \/proc\/PID\/limits: /'

_fds_growing() {
  metric_cmp leakwarden_leak_suspects '>=' 1 'family="db"' 'resource="fds"' &&
    metric_cmp leakwarden_leak_time_to_limit_seconds '>' 0 'family="db"' 'resource="fds"'
}
wait_until "an FD growing verdict with a time to RLIMIT_NOFILE" 30 _fds_growing
mark detected
say "FDs: growing, detected $(between fault detected)s after the leak started"
_threads_growing() { metric_cmp leakwarden_leak_suspects '>=' 1 'family="tasks"' 'resource="threads"'; }
wait_until "a threads growing verdict" 30 _threads_growing
mark detected_threads
say "threads: growing, detected $(between fault detected_threads)s after the leak started"
save_metrics metrics-detect.txt
scan_json "$W/policy.yaml" >"$OUT/scan-detect.json"
# The one-shot scan has no series; the daemon's verdicts are in /metrics (and its own scans).
echo "\$ leakwarden scan"
scan_table "$W/policy.yaml" | sed 's/^/  /' | cut -c1-200
echo "\$ curl -s $SIDECAR/metrics | grep -E 'family=\"(db|tasks)\"'"
show_metrics '^leakwarden_(leak_suspects|leak_time_to_limit_seconds|family_threads|family_open_fds|fd_limit_ratio_max)\{.*family="(db|tasks)"'
if [[ -n $PROM_PID ]]; then
  # One alert per resource: wait for both (the first to fire is either).
  _leak_alerts() {
    alert_firing LeakwardenLeakSuspected &&
      jq -e '[.[].labels.resource] | index("fds") != null and index("threads") != null' \
        "$OUT/alert-LeakwardenLeakSuspected.json" >/dev/null
  }
  wait_until "LeakwardenLeakSuspected firing for fds and threads" 30 _leak_alerts
  mark alert
  say "alert firing $(between fault alert)s after the leak started:"
  show_alert LeakwardenLeakSuspected
  # The services live until the rules are armed below, so this does not race their end.
  wait_until "LeakwardenFdsProjectedExhausted firing" 30 alert_firing LeakwardenFdsProjectedExhausted
  mark alert_fds
  say "FD exhaustion projected by Prometheus $(between fault alert_fds)s after the leak started:"
  show_alert LeakwardenFdsProjectedExhausted
fi

banner "the policy ends them: fds-near-limit (FDs/RLIMIT_NOFILE > 0.8) and thread-leak → terminate"
write_policy terminate
"$LW" policy check "$W/policy.yaml" >/dev/null || die "invalid policy"
kill -HUP "$INIT"
say "rules fds-near-limit and thread-leak armed (action: terminate; policy reloaded by SIGHUP)"
LAST_FDS=0
_both_gone() {
  local n
  n=$(ls "$(NSPROC)/$DB/fd" 2>/dev/null | wc -l) || true
  [[ $n -gt 0 ]] && LAST_FDS=$n
  if ! grep -q '^terminated=' "$OUT/timings.env" && ! ns_alive "$DB"; then mark terminated; fi
  if ! grep -q '^terminated_threads=' "$OUT/timings.env" && ! ns_alive "$TASKS"; then mark terminated_threads; fi
  grep -q '^terminated=' "$OUT/timings.env" && grep -q '^terminated_threads=' "$OUT/timings.env"
}
wait_until "fds-near-limit to terminate db-service and thread-leak task-service" 40 _both_gone
echo "$LAST_FDS" >"$OUT/db-last-fds"
say "db-service terminated $(between fault terminated)s after the leak started, at ~$LAST_FDS of $NOFILE descriptors"
say "task-service terminated $(between fault terminated_threads)s after the leak started"
show_audit 10
save_metrics metrics-after.txt
echo "\$ curl -s $SIDECAR/metrics | grep kills_total"
show_metrics '^leakwarden_kills_total'
cp "$W/bin/db-service.stderr" "$OUT/db-service.stderr"
if grep -qi 'too many open files' "$W/bin/db-service.stderr"; then die "db-service hit EMFILE"; fi

_only_sidecar() { [[ -z $(ns_ps | awk '$1 != 1') ]]; }
wait_until "only the sidecar left in the namespace" 10 _only_sidecar
assert_nothing_left
cleanup_run after "$W/policy.yaml" --kill --format json
mark cleaned
ls_work >"$OUT/work-after.txt"

verdict \
  "leak start → FD growing verdict (time to RLIMIT_NOFILE): $(between fault detected)s" \
  "leak start → threads growing verdict:                   $(between fault detected_threads)s" \
  "leak start → alert firing (for: 0s):                    $(between fault alert 2>/dev/null || echo n/a)s" \
  "leak start → db-service terminated (fd ratio > 0.8):    $(between fault terminated)s, at $LAST_FDS/$NOFILE FDs, no EMFILE" \
  "leak start → task-service terminated (thread leak):     $(between fault terminated_threads)s"
