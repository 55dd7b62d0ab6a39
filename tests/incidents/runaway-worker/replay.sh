#!/usr/bin/env bash
# Incident 4 — the runaway worker.
#
# The story: a web server's multiprocessing worker grew to 15 GB with node → chrome → chrome →
# chrome beneath it; load 16, swap 83%, found by hand with `ps`.
# Replay: a server process (`webserver`) whose worker starts a real headless Chromium and then
# grows its own RSS steadily (50 MiB/s in the fast form).
# Shown: with a user policy that names the worker (cmdline regex), the scan attributes the browser
# tree to its owner — the worker — with the RSS of the worker's whole subtree; the sidecar gives a
# "growing" memory verdict on the worker with a projected time to the limit (cgroup memory.max if
# set, else host memory); the LeakwardenLeakSuspected alert carries that projection; a rule
# terminates the worker long before the limit, and the orphaned browser tree goes with it.
source "$(dirname "$0")/../lib.sh"

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[[ -x $CHROMIUM ]] || die "chromium not installed (make deps)"
STEP_MIB=${STEP_MIB:-10}
TERMINATE_ABOVE=${TERMINATE_ABOVE:-640MiB}

# write_policy ACTION — the policy, with the runaway-worker rule's action. The replay starts with
# `report` and arms `terminate` (a reload, SIGHUP) once it has shown the detection: the worker
# grows 50 MiB/s, so an armed rule could end it before a slow machine shows the verdicts.
write_policy() {
cat >"$W/policy.yaml" <<YAML
families:
  - name: chromium
    kind: browser
    match:
      - comm: '^(chromium|chromium-browse|chrome|headless_shell|chrome-headless-s)$'
      - exe: '/(chromium|chromium-browser|chrome|headless_shell|chrome-headless-shell)( \(deleted\))?$'
  - name: crashpad
    kind: crashpad
    match:
      - comm: '^chrome_crashpad'
  # The user's addition: the server's workers, by command line.
  - name: worker
    kind: generic
    match:
      - cmdline: 'marker=wsgi-worker'
rules:
  # Growing for a while and already big: end it before the host does.
  - name: runaway-worker
    family: [worker]
    when:
      leak: { resource: memory, for: 2s }
      rss_above: $TERMINATE_ABOVE
    action: $1
    grace: 2s
  - name: orphaned-browser-tree
    family: [chromium, crashpad]
    when:
      orphaned_for: 1s
    action: kill-tree
    grace: 2s
leak:
  window: 20s
  min_samples: 10
stale_profiles:
  roots: ['$W']
  older_than: 1s
YAML
}
write_policy report

banner "runaway-worker: a server's worker grows without bound, a browser tree beneath it"
ns_start "$W/policy.yaml"
prom_start "leakwarden=$SIDECAR"

cat >"$W/bin/webserver" <<SH
#!/bin/bash
# The server: one worker, restarted never (the incident's server did not notice either).
'$W/bin/worker' &
wait
SH
cat >"$W/bin/worker" <<SH
#!/bin/bash
export TMPDIR='$W' HOME='$W/home'
'$CHROMIUM' ${CHROME_FLAGS[*]} --user-data-dir='$W/puppeteer_dev_chrome_profile-wsgi1' about:blank >/dev/null 2>&1 &
# (a puppeteer-style profile name, as node workers get.) The worker's own work, which leaks: the same process (exec keeps its pid and children).
exec '$FIXTURE' grow-rss --step-mib $STEP_MIB --every 200 --max-mib 4096 --marker=wsgi-worker >/dev/null
SH
chmod +x "$W/bin/webserver" "$W/bin/worker"
nsbg "$W/bin/webserver"
mark fault
_tree_up() {
  [[ $(ns_count '^chromium .*--type=renderer') -ge 1 ]] && [[ $(ns_count '^chrome_crashpad') -ge 2 ]] &&
    [[ -n $(ns_pid_of 'marker=wsgi-worker') ]]
}
wait_until "the worker and its Chromium" 60 _tree_up
WORKER=$(ns_pid_of 'marker=wsgi-worker')
SERVER=$(ns_pid_of '^webserver')
say "server pid $SERVER → worker pid $WORKER (growing ${STEP_MIB} MiB every 200 ms) → chromium tree"

_growing() {
  metric_cmp leakwarden_leak_suspects '>=' 1 'family="worker"' 'resource="memory"' &&
    metric_cmp leakwarden_leak_time_to_limit_seconds '>' 0 'family="worker"' 'resource="memory"'
}
wait_until "a growing memory verdict on the worker" 30 _growing
mark detected
say "detected in $(between fault detected)s: the worker's memory is growing"
# The family's total is judged on its own series, which began before the worker existed (zeros,
# then a step when it started): its verdict comes a few samples later. Wait for it before the
# snapshot that is checked, rather than racing it.
_family_growing() { metric_cmp leakwarden_family_growing '==' 1 'family="worker"' 'resource="memory"'; }
wait_until "the worker family's total judged growing" 30 _family_growing
save_metrics metrics-detect.txt
scan_json "$W/policy.yaml" >"$OUT/scan-detect.json"
echo "\$ leakwarden scan   # who owns the browser tree, and that owner's whole subtree"
scan_table "$W/policy.yaml" | sed 's/^/  /' | cut -c1-200
echo "\$ curl -s $SIDECAR/metrics | grep -E 'leak_suspects|time_to_limit|family_growing|resident' | grep worker"
show_metrics '^leakwarden_(leak_suspects|leak_time_to_limit_seconds|family_growing|family_resident_memory_bytes)\{.*worker'
if [[ -n $PROM_PID ]]; then
  wait_until "LeakwardenLeakSuspected firing in Prometheus" 30 alert_firing LeakwardenLeakSuspected
  mark alert
  say "alert firing $(between fault alert)s after the leak started:"
  show_alert LeakwardenLeakSuspected
fi

banner "the policy ends it: rule runaway-worker (growing and above $TERMINATE_ABOVE) → terminate"
write_policy terminate
"$LW" policy check "$W/policy.yaml" >/dev/null || die "invalid policy"
kill -HUP "$INIT"
say "rule runaway-worker armed (action: terminate; policy reloaded by SIGHUP)"
_worker_gone() { ! ns_alive "$WORKER"; }
wait_until "the rule to terminate the worker" 60 _worker_gone
mark terminated
say "worker terminated $(between fault terminated)s after the leak started"
_gone() { [[ $(ns_count '^(chromium|chrome_crashpad)') -eq 0 ]]; }
wait_until "its orphaned browser tree to be killed" 30 _gone
mark killed
say "its browser tree, orphaned, killed $(between terminated killed)s later"
show_audit 14
save_metrics metrics-after.txt
echo "\$ curl -s $SIDECAR/metrics | grep kills_total"
show_metrics '^leakwarden_kills_total'

# The server (ours, and not leaking) exits once its only worker is gone; end it if it has not.
if ns_alive "$SERVER"; then ns_kill KILL "$SERVER"; fi
_only_sidecar() { [[ -z $(ns_ps | awk '$1 != 1') ]]; }
wait_until "only the sidecar left in the namespace" 10 _only_sidecar
assert_nothing_left
_profile_gone() { [[ -z $(ls_work) ]]; }
wait_until "the sidecar to remove the dead browser's profile (stale)" 15 _profile_gone
say "profile directory removed by the sidecar: $(metric leakwarden_stale_dirs_removed_total 'outcome="removed"') removed"
cleanup_run after "$W/policy.yaml" --kill --format json
[[ $(cat "$OUT/cleanup-after.code") == 0 ]] || die "cleanup found something left"
mark cleaned
ls_work >"$OUT/work-after.txt"

verdict \
  "leak start → growing verdict with time to limit: $(between fault detected)s" \
  "leak start → alert firing (for: 0s):              $(between fault alert 2>/dev/null || echo n/a)s" \
  "leak start → worker terminated by rule:           $(between fault terminated)s" \
  "leak start → its browser tree killed:             $(between fault killed)s" \
  "leak start → profile directory removed:           $(between fault cleaned)s"
