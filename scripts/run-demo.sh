#!/bin/bash
# `make run`: the runner's embedded default job with the sidecar beside it, then a short report.
#
# Both run inside a private PID namespace (`unshare --pid --fork --mount-proc`, the shape of a
# Kubernetes pod with shareProcessNamespace: true): the sidecar sees and can kill only what the
# runner started, nothing else on this machine. The runner abandons 10% of its sessions' browsers
# (`--fault abandon:0.1`, like a bot that skips cleanup on an error); when it exits they are
# orphans, and the sidecar kills them by policy. Everything started here is ended here (the
# namespace dies with its init), and the scratch directory is removed.
#
# Environment: SIDECAR_LISTEN (default 127.0.0.1:9847), RUNNER_LISTEN (127.0.0.1:9848),
# FAULT (abandon:0.1), SESSIONS (the default job's 20), DEADLINE_S (whole run, default 180),
# KEEP_WORK=1 (keep the scratch directory and its logs).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
LEAKWARDEN=${LEAKWARDEN:-$ROOT/target/debug/leakwarden}
RUNNER=${RUNNER:-$ROOT/target/debug/leakwarden-runner}
SIDECAR_LISTEN=${SIDECAR_LISTEN:-127.0.0.1:9847}
RUNNER_LISTEN=${RUNNER_LISTEN:-127.0.0.1:9848}
FAULT=${FAULT:-abandon:0.1}
DEADLINE_S=${DEADLINE_S:-180}

# === inside the namespace (PID 1): start both, then stay and reap ===
if [[ ${1:-} == --inside ]]; then
  WORK=$2
  export TMPDIR=$WORK/tmp
  "$LEAKWARDEN" watch --policy "$WORK/policy.yaml" --listen "$SIDECAR_LISTEN" --interval 2s \
    >"$WORK/sidecar.log" 2>&1 &
  runner_args=(run --listen "$RUNNER_LISTEN" --fault "$FAULT" --summary-json "$WORK/summary.json")
  [[ -n ${SESSIONS:-} ]] && runner_args+=(--sessions "$SESSIONS")
  rc=0
  "$RUNNER" "${runner_args[@]}" >"$WORK/runner.log" 2>&1 || rc=$?
  echo "$rc" >"$WORK/runner.done"
  # PID 1 of the namespace: keep reaping what the sidecar kills until the namespace is ended.
  while true; do wait || true; sleep 1; done
fi

# === outside ===
die() { echo "run-demo: $*" >&2; exit 1; }
for b in "$LEAKWARDEN" "$RUNNER"; do
  [[ -x $b ]] || die "$b is not built: run \`make run\` (it builds first) or \`cargo build --workspace --bins\`"
done
unshare --pid --fork --mount-proc true 2>/dev/null ||
  die "needs a private PID namespace (unshare --pid): run as root. Without one the sidecar would judge every browser on this machine."

get() { # get ADDR PATH → body on stdout; fails if nothing answers
  curl -fsS --max-time 3 "http://$1$2" 2>/dev/null
}
for a in "$SIDECAR_LISTEN" "$RUNNER_LISTEN"; do
  if get "$a" /metrics >/dev/null; then die "$a is already in use (set SIDECAR_LISTEN / RUNNER_LISTEN)"; fi
done

# Short: Chromium's unix socket paths under the runner's TMPDIR must fit in 108 bytes, which
# leaves about 19 characters for the TMPDIR itself (the runner refuses a longer one).
WORK=$(mktemp -d /tmp/lw.XXXXXX)
mkdir -p "$WORK/tmp"
NS_PID=
cleanup() {
  # SIGKILL to unshare: --kill-child takes the namespace's init, and so everything in it, along.
  if [[ -n $NS_PID ]]; then kill -KILL "$NS_PID" 2>/dev/null || true; wait "$NS_PID" 2>/dev/null || true; fi
  if [[ -n ${KEEP_WORK:-} ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The built-in policy, with a shorter wait before an orphan is killed (30s → 10s) so the demo is
# quick, and stale profile directories looked for in the demo's own TMPDIR only.
cat >"$WORK/policy.yaml" <<POLICY
rules:
  - name: orphaned-browser-tree
    family: [chromium, chromedriver, crashpad]
    when:
      orphaned_for: 10s
    action: kill-tree
    grace: 5s
  - name: memory-leak
    when:
      leak: { resource: memory, for: 5m }
    action: report
stale_profiles:
  roots: [$WORK/tmp]
  older_than: 10s
POLICY
"$LEAKWARDEN" policy check "$WORK/policy.yaml" >/dev/null

# metric FILE NAME [REGEX] → the sum of NAME's samples (whose labels match REGEX), 0 if none.
metric() {
  awk -v name="$2" -v re="${3:-}" '
    $1 == name || index($1, name "{") == 1 { if (re == "" || $1 ~ re) s += $NF }
    END { printf "%d\n", s }' "$1" 2>/dev/null || echo 0
}

echo "leakwarden demo: sidecar on http://$SIDECAR_LISTEN, runner on http://$RUNNER_LISTEN (fault $FAULT)"
echo "  work dir $WORK (logs: sidecar.log, runner.log); everything runs in a private PID namespace"
# PID 1 runs under the name `tini` (a symlink to this script: a script's comm is the name it was
# exec'd by), like a container's init: the sidecar judges a browser first seen under a known init
# as orphaned, and the runner's abandoned browsers are double-forked there.
ln -s "$(readlink -f "$0")" "$WORK/tini"
unshare --pid --fork --mount-proc --kill-child "$WORK/tini" --inside "$WORK" >"$WORK/namespace.log" 2>&1 &
NS_PID=$!

start=$SECONDS
elapsed() { echo $((SECONDS - start)); }
: >"$WORK/sidecar.metrics"
: >"$WORK/runner.metrics"
scrape() {
  get "$SIDECAR_LISTEN" /metrics >"$WORK/s.tmp" && mv "$WORK/s.tmp" "$WORK/sidecar.metrics" || true
  # The runner's /metrics goes away when it exits: keep the last good scrape.
  get "$RUNNER_LISTEN" /metrics >"$WORK/r.tmp" && mv "$WORK/r.tmp" "$WORK/runner.metrics" || true
}
max_orphans=0 max_orphan_trees=0
progress() {
  local s=$WORK/sidecar.metrics r=$WORK/runner.metrics o t runner
  o=$(metric "$s" leakwarden_orphan_processes) t=$(metric "$s" leakwarden_orphan_trees)
  ((o > max_orphans)) && max_orphans=$o
  ((t > max_orphan_trees)) && max_orphan_trees=$t
  if [[ -e $WORK/runner.done ]]; then
    runner="runner done"
  else
    runner="sessions ok $(metric "$r" leakwarden_runner_sessions_total 'outcome="ok"') failed $(metric "$r" leakwarden_runner_sessions_total 'outcome="(failed|timeout)"'), browsers $(metric "$r" leakwarden_runner_active_browsers)"
  fi
  printf '  [%3ss] %s | sidecar: trees %s, orphaned processes %s, killed %s\n' "$(elapsed)" "$runner" \
    "$(metric "$s" leakwarden_trees)" "$o" "$(metric "$s" leakwarden_kills_total 'outcome="(killed|terminated)"')"
}

# 1. The runner's job, with the sidecar watching.
while [[ ! -e $WORK/runner.done ]]; do
  kill -0 "$NS_PID" 2>/dev/null || { cat "$WORK"/*.log >&2; die "the namespace ended early"; }
  (($(elapsed) < DEADLINE_S)) || die "the runner did not finish within ${DEADLINE_S}s (see $WORK/runner.log)"
  sleep 2; scrape; progress
done
runner_done_at=$(elapsed)
runner_rc=$(cat "$WORK/runner.done")
if [[ $runner_rc != 0 ]]; then
  tail -n 15 "$WORK/runner.log" >&2
  die "the runner exited with status $runner_rc"
fi
echo "  [${runner_done_at}s] runner finished; its abandoned browsers are now orphans: waiting for the sidecar"

# 2. The sidecar catches and kills the orphans (policy: orphaned for 10s → kill the tree).
while true; do
  sleep 2; scrape; progress
  s=$WORK/sidecar.metrics
  if (($(metric "$s" leakwarden_processes) == 0)) && (($(metric "$s" leakwarden_scans_total) > 0)); then break; fi
  (($(elapsed) < DEADLINE_S)) || { echo "  (deadline reached; browsers still running)"; break; }
done
sleep 2; scrape   # one more scan: stale profile directories

s=$WORK/sidecar.metrics r=$WORK/runner.metrics
# The runner's final numbers: its --summary-json (its /metrics is gone once it exits; the last
# scrape may miss the last session). Fall back to that last scrape.
runner_numbers() {
  python3 - "$WORK/summary.json" <<'PY' 2>/dev/null
import json, sys
s = json.load(open(sys.argv[1]))
n = s["sessions"]
print(sum(n.get(k, 0) for k in ("ok", "failed", "timeout", "cancelled")), n.get("ok", 0),
      n.get("failed", 0), n.get("timeout", 0), n.get("retried", 0),
      s.get("faults_injected", {}).get("abandon", 0), s["cleanup"]["leaks"])
PY
}
if ! read -r sessions ok failed timeout retried abandoned leaks < <(runner_numbers); then
  m() { metric "$r" leakwarden_runner_sessions_total "outcome=\"$1\""; }
  ok=$(m ok) failed=$(m failed) timeout=$(m timeout) retried=$(m retried)
  sessions=$((ok + failed + timeout + $(m cancelled)))
  abandoned=$(metric "$r" leakwarden_runner_faults_injected_total 'fault="abandon"')
  leaks=$(metric "$r" leakwarden_runner_cleanup_leaks_total)
fi
killed=$(metric "$s" leakwarden_kills_total 'outcome="(killed|terminated)"')
cat <<REPORT

=== leakwarden demo report ($(elapsed)s) ===
runner (leakwarden-runner, default job):
  sessions             $sessions finished: ok $ok, failed $failed, timeout $timeout (retries: $retried)
  browsers abandoned   $abandoned (fault $FAULT: left running on purpose, like a buggy bot)
  cleanup leaks        $leaks (what its own /proc check found left after closing a session)
sidecar (leakwarden watch):
  orphans caught       up to $max_orphan_trees orphaned tree(s), $max_orphans process(es) at once
  processes killed     $killed by rule orphaned-browser-tree (failed: $(metric "$s" leakwarden_kills_total 'outcome="failed"'))
  still running        $(metric "$s" leakwarden_processes) browser-family processes, $(metric "$s" leakwarden_orphan_processes) orphaned
  stale dirs removed   $(metric "$s" leakwarden_stale_dirs_removed_total 'outcome="removed"')
  scans                $(metric "$s" leakwarden_scans_total)
Metrics: while it runs, http://$SIDECAR_LISTEN/metrics and http://$RUNNER_LISTEN/metrics
  (Prometheus jobs "leakwarden" and "leakwarden-runner"; dashboards/ and alerts/ expect those;
  README.md "Alerts", "Dashboards"). Everything started here has been stopped.
REPORT
