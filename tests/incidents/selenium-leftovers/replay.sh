#!/usr/bin/env bash
# Incident 3 — chromedriver and Chrome left behind by Selenium.
#
# The story: `driver.quit()` failed or was never reached; chrome and chromedriver processes piled
# up, cleanup scripts fell back to `pkill -9 -f chrome`, user-data directories piled up.
# Replay: a Selenium-like client starts the real chromedriver, creates a session through its W3C
# HTTP API (chromedriver launches the real Chromium with a profile
# $TMPDIR/org.chromium.Chromium.scoped_dir.XXXXXX), then the client is SIGKILLed — chromedriver's
# parent. An unrelated process whose command line merely contains "chrome" runs beside it.
# Shown: chromedriver + Chromium + crashpad seen as ONE orphaned tree; the sidecar's metrics and
# the LeakwardenOrphanedBrowsers alert; `leakwarden cleanup --kill` (the replacement for
# `pkill -9 -f chrome`) kills the tree whole — no stray renderer, no crashpad, no zombie — then
# reports the session's profile directories as stale and removes them; the unrelated process is
# untouched.
source "$(dirname "$0")/../lib.sh"

command -v chromedriver >/dev/null || die "chromedriver not installed (make deps)"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

# The sidecar only observes here (dry_run: the same rules, nothing signalled): the replay shows
# detection by the daemon and the end by the one-shot `cleanup --kill`, as a cron job would do it.
cat >"$W/watch-policy.yaml" <<YAML
dry_run: true
rules:
  - name: orphaned-browser-tree
    family: [chromium, chromedriver, crashpad]
    when:
      orphaned_for: 2s
    action: kill-tree
    grace: 2s
stale_profiles:
  roots: ['$W']
  older_than: 1s
YAML
# cleanup's policy: the built-in default's kill rule (orphaned_for lowered for the fast form).
cat >"$W/cleanup-policy.yaml" <<YAML
rules:
  - name: orphaned-browser-tree
    family: [chromium, chromedriver, crashpad]
    when:
      orphaned_for: 2s
    action: kill-tree
    grace: 2s
stale_profiles:
  roots: ['$W']
  older_than: 1s
  remove: true
YAML

banner "selenium-leftovers: chromedriver and Chrome left behind by Selenium"
ns_start "$W/watch-policy.yaml"
prom_start "leakwarden=$SIDECAR"

# The unrelated process: its command line contains "chrome"; `pkill -9 -f chrome` would kill it.
nsrun sh -c "\"$FIXTURE\" sleep --marker=notes-about-chrome-profiles.txt >/dev/null 2>&1 &"
BYSTANDER=
_bystander() { BYSTANDER=$(ns_pid_of 'lw-fixture .*notes-about-chrome'); [[ -n $BYSTANDER ]]; }
wait_until "the unrelated process" 10 _bystander
say "unrelated process: pid $BYSTANDER, command line contains 'chrome' (notes-about-chrome-profiles.txt)"

# The Selenium-like client: starts chromedriver, opens a W3C session, then blocks (a test that
# hangs, or dies before driver.quit()).
PORT=$(free_port)
mkfifo "$W/bin/never"
cat >"$W/bin/selenium-client" <<SH
#!/bin/bash
export TMPDIR='$W' HOME='$W/home'
chromedriver --port=$PORT >'$W/chromedriver.log' 2>&1 &
for i in \$(seq 100); do curl -fs -o /dev/null http://127.0.0.1:$PORT/status && break; sleep 0.1; done
curl -fs -XPOST http://127.0.0.1:$PORT/session -H 'Content-Type: application/json' -d '{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"binary":"$CHROMIUM","args":["--headless","--no-sandbox","--disable-background-networking","--disable-component-update","--no-first-run","--disable-sync","--disable-gpu","--disable-dev-shm-usage"]}}}}' >'$W/session.json'
read -r _ <'$W/bin/never'
SH
chmod +x "$W/bin/selenium-client"
nsbg "$W/bin/selenium-client"
_session() { [[ -s $W/session.json ]] && jq -e '.value.sessionId' "$W/session.json" >/dev/null 2>&1; }
wait_until "a W3C session (chromedriver launching Chromium)" 60 _session
_settled() {
  [[ $(ns_count '^chrome_crashpad') -ge 2 ]] && [[ $(ns_count '^chromium .*--type=renderer') -ge 1 ]]
}
wait_until "Chromium with its renderer and two crashpad handlers" 60 _settled
SESSION=$(jq -r '.value.sessionId' "$W/session.json")
say "W3C session $SESSION: $(ns_count '^chromedriver') chromedriver, $(ns_count '^chromium') chromium, $(ns_count '^chrome_crashpad') crashpad processes"
CLIENT=$(ns_pid_of '^selenium-client')
echo "\$ pgrep -f chrome   # what a pkill -9 -f chrome script would kill"
nsrun pgrep -af chrome | cut -c1-110 | sed 's/^/  /'
echo "$(nsrun pgrep -f chrome | wc -l)" >"$OUT/pgrep-count"

banner "fault: the client dies before driver.quit() (SIGKILL pid $CLIENT)"
ns_kill KILL "$CLIENT"
mark fault
_orphaned() { metric_cmp leakwarden_orphan_trees '>=' 1; }
wait_until "the sidecar to count the orphaned tree" 20 _orphaned
mark detected
say "detected in $(between fault detected)s: the sidecar counts an orphaned tree"
_dry() { metric_cmp leakwarden_kills_total '>=' 1 'rule="orphaned-browser-tree"' 'outcome="dry_run"'; }
wait_until "the watch policy's rule to match (dry run)" 20 _dry
mark rule_matched
save_metrics metrics-detect.txt
scan_json "$W/cleanup-policy.yaml" >"$OUT/scan-detect.json"
echo "\$ leakwarden scan"
scan_table "$W/cleanup-policy.yaml" | sed 's/^/  /'
echo "\$ curl -s $SIDECAR/metrics | grep -E 'orphan|leakwarden_trees|kills_total'"
show_metrics '^leakwarden_(orphan_processes|orphan_trees|trees|kills_total)'
if [[ -n $PROM_PID ]]; then
  wait_until "LeakwardenOrphanedBrowsers firing in Prometheus" 30 alert_firing LeakwardenOrphanedBrowsers
  mark alert
  say "alert firing $(between fault alert)s after the fault:"
  show_alert LeakwardenOrphanedBrowsers
fi

banner "cleanup: leakwarden cleanup instead of pkill -9 -f chrome"
cleanup_run tree-dry "$W/cleanup-policy.yaml" --format table
cleanup_run tree-kill "$W/cleanup-policy.yaml" --kill --format json
_gone() { [[ $(ns_count '^(chromium|chromedriver|chrome_crashpad)') -eq 0 ]]; }
wait_until "every chromedriver, chromium and crashpad process to end" 20 _gone
mark killed
say "tree killed $(between fault killed)s after the fault; zombies: $(ns_ps | awk '$3=="Z"' | wc -l)"
ns_alive "$BYSTANDER" || die "the unrelated process was killed"
say "the unrelated process $BYSTANDER is still running"
_stale() {
  nsrun "$LW" scan --policy "$W/cleanup-policy.yaml" --format json >"$OUT/scan-stale.json" &&
    [[ $(jq '.stale_dirs | length' "$OUT/scan-stale.json") -ge 1 ]] &&
    [[ $(jq '[.stale_dirs[] | select(.path | test("scoped_dir"))] | length' "$OUT/scan-stale.json") -ge 1 ]]
}
if [[ -n $(ls_work | grep scoped_dir) ]]; then
  wait_until "the session's profile to be reported stale" 20 _stale
  say "stale directories left by the session:"
  jq -r '.stale_dirs[].path' "$OUT/scan-stale.json" | sed 's/^/  /'
  cleanup_run dirs-dry "$W/cleanup-policy.yaml" --format table
  cleanup_run dirs-kill "$W/cleanup-policy.yaml" --kill --format json
fi
_dirs_gone() { [[ -z $(ls_work | grep -E '^org\.chromium\.Chromium\.') ]]; }
wait_until "the session's directories to be removed" 10 _dirs_gone
mark cleaned
ns_alive "$BYSTANDER" || die "the unrelated process was killed"
echo "$BYSTANDER" >"$OUT/bystander-pid"
save_metrics metrics-after.txt

# The replay's own leftovers: the unrelated process is ours, end it; then nothing may remain.
ns_kill KILL "$BYSTANDER"
_only_sidecar() { [[ -z $(ns_ps | awk '$1 != 1') ]]; }
wait_until "only the sidecar left in the namespace" 10 _only_sidecar
assert_nothing_left
ls_work >"$OUT/work-after.txt"
[[ ! -s $OUT/work-after.txt ]] || die "left on disk: $(cat "$OUT/work-after.txt")"

verdict \
  "fault → detected (orphaned tree counted):  $(between fault detected)s" \
  "fault → alert firing (for: 0s):             $(between fault alert 2>/dev/null || echo n/a)s" \
  "fault → tree killed by cleanup --kill:      $(between fault killed)s" \
  "fault → profile directories removed:        $(between fault cleaned)s" \
  "unrelated 'chrome' process: untouched; zombies: 0; directories left: 0"
