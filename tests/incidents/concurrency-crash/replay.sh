#!/usr/bin/env bash
# Incident 2 — the bot that crashed under heavy concurrency.
#
# The story: 100+ concurrent browser contexts exhausted file descriptors and memory ("Too many
# open files", OOM); failures were silent.
# Replay: `leakwarden-runner` asked for 64 concurrent sessions on this 2-core machine, each browser
# expected to need $BROWSER_MEMORY (so memory admits only a few), against a target that starts
# failing mid-run (it drops connections) while browser launches fail too, then recovers.
# Shown: the runner stays up; at most as many browsers as memory admits; admission rejections,
# failed sessions and launch failures counted; the circuit opens while launches fail and closes
# when they recover; no EMFILE; the runner's own FDs and tokio tasks stay bounded
# (process_open_fds, leakwarden_runner_tasks_alive); the sidecar finds nothing left behind.
source "$(dirname "$0")/../lib.sh"

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[[ -x $CHROMIUM ]] || die "chromium not installed (make deps)"
[[ -x $RUNNER ]] || die "leakwarden-runner not built"
SESSIONS=${SESSIONS:-64}
# Memory one browser is expected to need: so much that only a few fit in MemAvailable (the
# admission is what must bound the run, not the 64 asked for).
AVAIL_MIB=$(awk '/^MemAvailable:/ {printf "%.0f", $2 / 1024}' /proc/meminfo)
BROWSER_MEMORY=${BROWSER_MEMORY:-6GiB}

cat >"$W/policy.yaml" <<YAML
stale_profiles:
  roots: ['$W']
  older_than: 5s
YAML

# The target: a page, or — while bin/target-down exists — a dropped connection.
TPORT=$(free_port)
cat >"$W/bin/target.py" <<PY
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists('$W/bin/target-down'):
            self.close_connection = True
            return
        body = b'<html><head><title>shop</title></head><body><p id="ok">ok</p></body></html>'
        self.send_response(200)
        self.send_header('Content-Type', 'text/html')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', $TPORT), H).serve_forever()
PY
# Browser launches fail while bin/launch-down exists (a broken image, a full disk, OOM at start).
cat >"$W/bin/chromium" <<SH
#!/bin/sh
[ -e '$W/bin/launch-down' ] && { echo 'simulated launch failure' >&2; exit 1; }
exec /usr/lib/chromium/chromium "\$@"
SH
chmod +x "$W/bin/chromium"
cat >"$W/job.yaml" <<YAML
name: concurrency-crash
sessions: $SESSIONS
concurrency: 64
retries: 0
timeouts: { step: 15s, session: 40s }
targets: ["http://127.0.0.1:$TPORT"]
steps:
  - navigate: /
  - wait_for: "#ok"
  - evaluate: "document.title"
YAML

banner "concurrency-crash: 64 sessions at once on 2 cores, a target that fails mid-run"
ns_start "$W/policy.yaml"
RPORT=$(free_port)
prom_start "leakwarden=$SIDECAR" "leakwarden-runner=127.0.0.1:$RPORT"
nsbg python3 "$W/bin/target.py"
wait_until "the target" 10 curl -fs -o /dev/null "http://127.0.0.1:$TPORT/"
say "target http://127.0.0.1:$TPORT; runner: --concurrency 64 --browser-memory $BROWSER_MEMORY (MemAvailable $AVAIL_MIB MiB)"
nsbg env TMPDIR="$W" HOME="$W/home" "$RUNNER" run "$W/job.yaml" --listen "127.0.0.1:$RPORT" \
  --run-dir "$W" --chromium "$W/bin/chromium" --browser-memory "$BROWSER_MEMORY" \
  --recycle-after 4 --launch-timeout 10s --summary-json "$OUT/summary.json" >"$W/bin/runner.log" 2>&1
RUNNER_PID=
_up() { RUNNER_PID=$(ns_pid_of '^leakwarden-runn'); [[ -n $RUNNER_PID ]]; }
wait_until "the runner" 20 _up

# rm NAME — a runner metric; every poll also records the maxima we assert on.
RM() { METRICS_ADDR=127.0.0.1:$RPORT metric "$@" 2>/dev/null || true; }
: >"$OUT/samples.txt"
sample() {
  local m
  m=$(metrics "127.0.0.1:$RPORT" 2>/dev/null) || return 0
  awk '/^(leakwarden_runner_active_browsers|leakwarden_runner_active_sessions|leakwarden_runner_tasks_alive|process_open_fds|leakwarden_runner_circuit_state) / {printf "%s=%s ", $1, $2} END {print ""}' <<<"$m" >>"$OUT/samples.txt"
  echo "$m" >"$OUT/metrics-runner-last.txt"
}
_ok_sessions() { sample; [[ $(RM leakwarden_runner_sessions_total 'outcome="ok"') -ge ${1:-4} ]] 2>/dev/null; }
wait_until "the first sessions to succeed" 60 _ok_sessions 4
say "sessions ok so far: $(RM leakwarden_runner_sessions_total 'outcome="ok"'); active browsers $(RM leakwarden_runner_active_browsers), memory admission rejections $(RM leakwarden_runner_admission_rejections_total)"

banner "fault: the target drops every connection and browser launches fail"
touch "$W/bin/target-down" "$W/bin/launch-down"
mark fault
_failing() {
  sample
  local f t
  f=$(RM leakwarden_runner_sessions_total 'outcome="failed"') t=$(RM leakwarden_runner_sessions_total 'outcome="timeout"')
  if ! ns_alive "$RUNNER_PID" && [[ -s $OUT/summary.json ]]; then
    f=$(jq '.sessions.failed' "$OUT/summary.json") t=$(jq '.sessions.timeout' "$OUT/summary.json")
  fi
  [[ $((${f:-0} + ${t:-0})) -ge 1 ]]
}
wait_until "failed or timed-out sessions counted" 70 _failing
mark detected
say "failures counted $(between fault detected)s after the fault: failed $(RM leakwarden_runner_sessions_total 'outcome="failed"'), timeout $(RM leakwarden_runner_sessions_total 'outcome="timeout"')"
_open() { sample; [[ $(RM leakwarden_runner_circuit_state) == 2 ]]; }
if try_until 40 _open; then
  mark circuit_open
  say "circuit OPEN $(between fault circuit_open)s after the fault (launch failures: $(RM leakwarden_runner_launch_failures_total))"
else
  say "circuit did not open within 40s (launch failures: $(RM leakwarden_runner_launch_failures_total))"
fi
cp "$OUT/metrics-runner-last.txt" "$OUT/metrics-runner-fault.txt"
echo "\$ curl -s 127.0.0.1:$RPORT/metrics | grep -E 'sessions_total|circuit|launch_failures|admission|active_browsers|tasks_alive|open_fds'"
grep -E '^(leakwarden_runner_(sessions_total|circuit_state|launch_failures_total|admission_rejections_total|active_browsers|tasks_alive)|process_open_fds)' "$OUT/metrics-runner-fault.txt" | sed 's/^/  /' || true

banner "recovery: the target answers again, launches succeed"
rm -f "$W/bin/target-down" "$W/bin/launch-down"
mark recovered
_closed() { sample; [[ $(RM leakwarden_runner_circuit_state) == 0 ]]; }
if grep -q '^circuit_open=' "$OUT/timings.env"; then
  wait_until "the circuit to close" 60 _closed
  mark circuit_closed
  say "circuit CLOSED $(between recovered circuit_closed)s after recovery"
fi
_done() { sample; ! ns_alive "$RUNNER_PID"; }
wait_until "the runner to finish its job" 120 _done
mark finished
say "runner finished: $(jq -c '{sessions, launch_failures, browsers_launched, cleanup: {leaks: .cleanup.leaks, leaked_processes: .cleanup.leaked_processes}}' "$OUT/summary.json" 2>/dev/null)"
cp "$W/bin/runner.log" "$OUT/runner.log"
if grep -qiE 'too many open files|EMFILE' "$W/bin/runner.log"; then die "EMFILE in the runner's log"; fi
awk '{for (i = 1; i <= NF; i++) {split($i, kv, "="); if (kv[2] + 0 > max[kv[1]]) max[kv[1]] = kv[2] + 0}}
  END {for (k in max) printf "%s=%s\n", k, max[k]}' "$OUT/samples.txt" | sort >"$OUT/maxima.env"
say "maxima over the run:"
sed 's/^/  /' "$OUT/maxima.env"

banner "afterwards: the sidecar finds nothing"
save_metrics metrics-after.txt
scan_json "$W/policy.yaml" >"$OUT/scan-after.json"
ns_count '^(chromium|chrome_crashpad)' >"$OUT/browsers-after"
say "sidecar: trees $(metric leakwarden_trees), orphaned trees $(metric leakwarden_orphan_trees), stale dirs $(metric leakwarden_stale_profile_dirs)"
cleanup_run after "$W/policy.yaml" --format json
# The target server is ours: end it.
TARGET=$(ns_pid_of 'target\.py')
[[ -z $TARGET ]] || ns_kill KILL "$TARGET"
_only_sidecar() { [[ -z $(ns_ps | awk '$1 != 1') ]]; }
wait_until "only the sidecar left in the namespace" 10 _only_sidecar
assert_nothing_left
ls_work >"$OUT/work-after.txt"
mark cleaned

verdict \
  "fault → failures counted:  $(between fault detected)s" \
  "fault → circuit open:      $(between fault circuit_open 2>/dev/null || echo n/a)s; recovery → closed: $(between recovered circuit_closed 2>/dev/null || echo n/a)s" \
  "runner up to the end; maxima: $(tr '\n' ' ' <"$OUT/maxima.env")" \
  "left behind: $(cat "$OUT/browsers-after") browser processes, $(wc -l <"$OUT/work-after.txt") directories"
