#!/bin/bash
# Soak (issue 7, item 3): `make soak`. Minutes, not part of `make test`.
#
#   tests/bench/soak.sh [SESSIONS]          (default 1000)
#
# In a private PID namespace (`unshare --pid --fork --mount-proc --kill-child`; PID 1 is this
# script with `--inner`, so everything dies with it): `leakwarden watch` (built-in policy, its
# stale-profile roots narrowed to the soak's own directory, interval LW_SOAK_INTERVAL, default 5s)
# and `leakwarden-runner run` (embedded default job, --concurrency LW_SOAK_CONCURRENCY, default 4
# — one browser, four contexts — faults in ≥ 10% of sessions: LW_SOAK_FAULTS, default
# kill-browser:0.05 abandon:0.04 crash:0.02; a crash costs a 10 s step timeout; abandoned browsers
# are the orphans the sidecar has to kill). Every LW_SOAK_SAMPLE seconds (5) both programs' VmRSS and
# open FDs, the runner's and the sidecar's counters. The run is stopped (SIGTERM, drain) after
# LW_SOAK_MAX_MIN minutes (25). After the runner exits, the sidecar gets up to LW_SOAK_AFTER
# seconds (300) to finish the orphans (`orphaned_for: 30s` in the built-in policy), then the
# namespace is checked for browser processes left.
#
# Output: target/bench/soak.tsv (samples), soak-summary.json (the runner's), soak.md (figures,
# least-squares slopes), and docs/img/soak.png (gnuplot) unless LW_SOAK_PLOT=0.
#
# Exit 0 only when every session succeeded (or was cancelled by the stop at LW_SOAK_MAX_MIN), the
# runner exited 0, its cleanup found no leak and no browser process was left; otherwise exit 1,
# logging each reason — for a session that did not succeed, every run of it: its browser, its
# error, and whether it was lost to a cause not its own.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

if [[ ${1:-} != --inner ]]; then
    [[ -x $LW ]] || die "$LW missing: cargo build --release"
    [[ -x $LW_RUNNER ]] || die "$LW_RUNNER missing: cargo build --release"
    mkdir -p "$BENCH_OUT"
    export LW LW_RUNNER BENCH_OUT
    # PID 1 runs as `tini` (a symlink to this script; #!/bin/bash so comm is the exec'd name),
    # like a container init: the runner's abandoned browsers are double-forked to it, and the
    # sidecar judges a browser first seen under a known init as orphaned.
    ln -sf "$(readlink -f "$0")" "$BENCH_OUT/tini"
    unshare --pid --fork --mount-proc --kill-child "$BENCH_OUT/tini" --inner "$@" &
    up=$!
    trap 'kill -KILL "$up" 2>/dev/null || true' EXIT
    trap 'exit 130' INT TERM
    rc=0
    wait "$up" || rc=$?
    trap - EXIT
    ((rc == 0)) || exit "$rc"
    if [[ ${LW_SOAK_PLOT:-1} == 1 ]]; then
        command -v gnuplot >/dev/null || die "gnuplot missing: apt-get install -y --no-install-recommends gnuplot-nox"
        mkdir -p "$ROOT/docs/img"
        gnuplot -e "tsv='$BENCH_OUT/soak.tsv'; out='$ROOT/docs/img/soak.png'" "$(dirname "$0")/soak.gp"
        log "plot: docs/img/soak.png"
    fi
    exit 0
fi

# --- inside the namespace: we are PID 1 ---
shift
SESSIONS=${1:-1000}
INTERVAL=${LW_SOAK_INTERVAL:-5s}
SAMPLE=${LW_SOAK_SAMPLE:-5}
MAX_MIN=${LW_SOAK_MAX_MIN:-25}
CONC=${LW_SOAK_CONCURRENCY:-4}
read -r -a FAULTS <<<"${LW_SOAK_FAULTS:-kill-browser:0.05 abandon:0.04 crash:0.02}"
((BASHPID == 1)) || die "--inner must run as PID 1 of a PID namespace"

# Short: Chromium's unix socket paths under the run directory allow ~61 bytes.
tmp=$(mktemp -d /tmp/lws.XXXXXX)
trap 'kill_started; rm -rf "$tmp"' EXIT
export TMPDIR=$tmp

# The built-in policy, but stale profile directories only under the soak's own directory: /tmp
# is shared with the rest of the machine, whose processes this namespace cannot see.
{
    "$LW" policy default
    printf 'stale_profiles:\n  roots: [%s]\n  older_than: 1m\n' "'$tmp'"
} >"$tmp/policy.yaml"
"$LW" policy check "$tmp/policy.yaml" >/dev/null || die "policy rejected"

lw_port=$(free_port)
lw_url=http://127.0.0.1:$lw_port/metrics
"$LW" watch --policy "$tmp/policy.yaml" --interval "$INTERVAL" --listen "127.0.0.1:$lw_port" \
    --log-format json </dev/null >/dev/null 2>"$BENCH_OUT/soak-sidecar.log" &
lw=$!
STARTED+=("$lw")
wait_http "http://127.0.0.1:$lw_port/readyz" 30 || die "sidecar not ready"

r_port=$(free_port)
r_url=http://127.0.0.1:$r_port/metrics
fault_args=()
for f in "${FAULTS[@]}"; do fault_args+=(--fault "$f"); done
"$LW_RUNNER" run --sessions "$SESSIONS" --concurrency "$CONC" "${fault_args[@]}" \
    --listen "127.0.0.1:$r_port" --run-dir "$tmp" --summary-json "$BENCH_OUT/soak-summary.json" \
    --log-format json </dev/null >/dev/null 2>"$BENCH_OUT/soak-runner.log" &
runner=$!
STARTED+=("$runner")
log "soak: $SESSIONS sessions, faults ${FAULTS[*]}, sidecar interval $INTERVAL (ns pids: sidecar $lw, runner $runner)"

TSV=$BENCH_OUT/soak.tsv
printf 't_s\trunner_rss_kib\trunner_fds\tsidecar_rss_kib\tsidecar_fds\tsessions_done\tactive_browsers\tcleanup_leaks\tsidecar_kills\tns_procs\n' >"$TSV"
rbody=""
t_start=$EPOCHREALTIME
elapsed() { awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
sample() {
    local rr rf sr sf done act leaks kills body
    if [[ -d /proc/$runner ]] && [[ $(awk '{ print $3 }' "/proc/$runner/stat" 2>/dev/null) != Z ]]; then
        rr=$(vm_kib "$runner" VmRSS)
        rf=$(fd_count "$runner")
        body=$(curl -fs --max-time 2 "$r_url" || true)
        [[ -n $body ]] && rbody=$body
    else
        rr=nan
        rf=nan
    fi
    sr=$(vm_kib "$lw" VmRSS)
    sf=$(fd_count "$lw")
    done=$(metric_sum leakwarden_runner_sessions_total <<<"$rbody")
    act=$(metric_sum leakwarden_runner_active_browsers <<<"$rbody")
    leaks=$(metric_sum leakwarden_runner_cleanup_leaks_total <<<"$rbody")
    kills=$(curl -fs --max-time 2 "$lw_url" | grep -v 'outcome="dry_run"' | metric_sum leakwarden_kills_total)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(elapsed)" "$rr" "$rf" "$sr" "$sf" \
        "$done" "$act" "$leaks" "$kills" "$(visible_procs)" >>"$TSV"
}

deadline=$((SECONDS + MAX_MIN * 60))
stopped=0
last_log=0
while kill -0 "$runner" 2>/dev/null && [[ $(awk '{ print $3 }' "/proc/$runner/stat" 2>/dev/null) != Z ]]; do
    sample
    if ((SECONDS >= deadline && !stopped)); then
        log "soak: ${MAX_MIN} min reached; SIGTERM to the runner (drain)"
        kill -TERM "$runner"
        stopped=1
    fi
    if ((SECONDS - last_log >= 60)); then
        log "soak: $(tail -1 "$TSV" | awk -F'\t' '{ printf "t=%ss sessions=%s runner_rss=%sKiB fds=%s sidecar_rss=%sKiB fds=%s kills=%s procs=%s", $1, $6, $2, $3, $4, $5, $9, $10 }')"
        last_log=$SECONDS
    fi
    sleep "$SAMPLE"
done
rc=0
wait "$runner" || rc=$?
log "soak: runner exited with $rc after $(elapsed) s"

# The sidecar's turn: abandoned trees hang under the runner (a subreaper) while it lives; once it
# is gone they are orphans, killed `orphaned_for: 30s` later (built-in policy, at most 30 kills a
# minute). Wait until no browser process is left, up to LW_SOAK_AFTER seconds (300).
browsers() {
    local d c
    for d in /proc/[0-9]*; do
        c=$(<"$d/comm") 2>/dev/null || continue
        [[ $(awk '{ print $3 }' "$d/stat" 2>/dev/null) == Z ]] && continue
        [[ $c =~ ^(chromium|chrome|chrome_crashpad|headless_shell) ]] && echo "${d#/proc/} $c"
    done
    return 0
}
t_exit=$SECONDS
after=${LW_SOAK_AFTER:-300}
n_at_exit=$(browsers | grep -c . || true)
log "soak: $n_at_exit browser processes left when the runner exited"
while ((SECONDS - t_exit < after)); do
    sleep "$SAMPLE"
    sample
    [[ -z $(browsers) ]] && break
done
log "soak: browsers gone (or gave up) $((SECONDS - t_exit)) s after the runner exited"
left=$(browsers)
nleft=$(grep -c . <<<"$left" || true)
lwbody=$(curl -fs "$lw_url")

# Least-squares slope of column $1 against t, over samples with t ≥ $2 (runner alive: not nan).
slope() {
    awk -F'\t' -v c="$1" -v from="$2" 'NR > 1 && $c != "nan" && $1 >= from {
        n++; x = $1 / 3600; y = $c; sx += x; sy += y; sxx += x * x; sxy += x * y; y0 = (n == 1 ? y : y0); y1 = y
    } END {
        if (n < 3) { print "—"; exit }
        b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
        printf "%.1f per hour (first %s, last %s, n=%d)", b, y0, y1, n
    }' "$TSV"
}
warm=$(awk -F'\t' 'NR > 1 { t = $1 } END { printf "%.0f", t / 10 }' "$TSV")
S=$BENCH_OUT/soak-summary.json
{
    echo "## Soak ($(date -u +%FT%TZ))"
    echo
    machine_info
    echo "- command: \`tests/bench/soak.sh $SESSIONS\` (runner: \`leakwarden-runner run --sessions $SESSIONS --concurrency $CONC ${fault_args[*]}\`; sidecar: \`leakwarden watch --interval $INTERVAL\`, built-in policy, stale roots = the soak's directory), in one private PID namespace"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    if [[ -s $S ]]; then
        jq -r '"| sessions planned / by outcome | \(.sessions_planned) / \(.sessions | to_entries | map("\(.key) \(.value)") | join(", ")) |",
               "| not started (stopped early) | \(.not_started)\(if .interrupted then " (interrupted)" else "" end) |",
               "| faults injected | \(.faults_injected | to_entries | map("\(.key) \(.value)") | join(", ")) (\(.faults_injected | add // 0) in total) |",
               "| attempts / collateral restarts (browser lost to another session'"'"'s fault or a crash; no retry spent) | \(.attempts) / \(.collateral_restarts // 0) |",
               "| wall time | \(.wall_seconds | floor) s |",
               "| sessions per minute | \(.sessions_per_minute * 10 | round / 10) |",
               "| browsers launched | \(.browsers_launched) (launch failures \(.launch_failures)) |",
               "| runner: leaked processes after close (cleanup_leaks_total) | \(.cleanup.leaks) (leaked_processes \(.cleanup.leaked_processes), dirs left \(.cleanup.dirs_left)) |"' "$S"
    else
        echo "| runner summary | missing (runner exit $rc) |"
    fi
    echo "| runner's leakwarden_runner_cleanup_leaks_total (last scrape) | $(metric_sum leakwarden_runner_cleanup_leaks_total <<<"$rbody") |"
    echo "| orphans the sidecar killed (kills_total by outcome) | $(awk '/^leakwarden_kills_total/ && $NF > 0 { sub(/^leakwarden_kills_total/, ""); printf "%s ", $0 }' <<<"$lwbody") |"
    echo "| browser processes left in the namespace when the runner exited → $((SECONDS - t_exit)) s later | $n_at_exit → $nleft |"
    echo "| sidecar scans | $(metric_sum leakwarden_scans_total <<<"$lwbody") (failures $(metric_sum leakwarden_scan_failures_total <<<"$lwbody")) |"
    echo "| runner VmRSS KiB slope (all / after first 10%) | $(slope 2 0) / $(slope 2 "$warm") |"
    echo "| runner FDs slope | $(slope 3 0) / $(slope 3 "$warm") |"
    echo "| sidecar VmRSS KiB slope | $(slope 4 0) / $(slope 4 "$warm") |"
    echo "| sidecar FDs slope | $(slope 5 0) / $(slope 5 "$warm") |"
    echo "| sidecar peak VmHWM | $(vm_kib "$lw" VmHWM) KiB |"
    echo
    if [[ -n $left ]]; then
        echo "Left:"; echo; echo '```'; echo "$left"; echo '```'; echo
    fi
} | tee "$BENCH_OUT/soak.md"

# The verdict, with its reasons: which sessions did not succeed and why (each run: its browser,
# its error, and whether it was lost to a cause not its own), leaks, browsers left.
reasons=()
((rc == 0)) || reasons+=("the runner exited with $rc (0 ok, 2 a session failed, 3 cleanup found a leak)")
if [[ -s $S ]]; then
    not_ok='.records[] | select(.outcome != "ok" and .outcome != "retried" and .outcome != "cancelled")'
    bad=$(jq "[$not_ok] | length" "$S")
    if ((bad > 0)); then
        reasons+=("$bad session(s) did not succeed (listed above)")
        jq -r "$not_ok"' |
            "session \(.index): \(.outcome) after \(.attempts) attempt(s) and \(.collateral_restarts // 0) collateral restart(s), faults [\(.faults | join(", "))]: \(.error // "no error")",
            (.runs // [] | to_entries[] |
             "  run \(.key + 1) on \(.value.browser // "no browser"): \(.value.error // "ok")\(if .value.collateral then " — collateral: \(.value.collateral)" else "" end)")' "$S" |
            while IFS= read -r line; do log "soak: $line"; done
    fi
    leaks=$(jq '.cleanup.leaks' "$S")
    ((leaks == 0)) || reasons+=("the runner's cleanup found $leaks leak(s)")
else
    reasons+=("the runner wrote no summary")
fi
((nleft == 0)) || reasons+=("$nleft browser process(es) left in the namespace $((SECONDS - t_exit)) s after the runner exited")
if ((${#reasons[@]} > 0)); then
    for r in "${reasons[@]}"; do log "soak FAILED: $r"; done
    exit 1
fi
log "soak passed: every session succeeded (or was cancelled by the stop), nothing leaked, nothing left"
