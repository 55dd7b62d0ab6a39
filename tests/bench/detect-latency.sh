#!/usr/bin/env bash
# Detection latency (issue 7, item 4): time from a launcher's SIGKILL to the end of its orphaned
# browser tree, killed by `leakwarden watch`.
#
#   tests/bench/detect-latency.sh [TRIALS] [INTERVAL …]      (default: 20 trials, 1s 5s)
#
# Everything runs in a private PID namespace (`unshare --pid --fork --mount-proc --kill-child`),
# whose PID 1 is this script (`--inner`): nothing outside is visible to the sidecar, and when the
# script ends the namespace and all in it die. Per interval: `leakwarden watch --interval I` with a
# policy whose kill-tree rule has `orphaned_for: 0s`; per trial: a fake browser tree under a
# launcher (`lw-fixture launch <tmp>/chromium --user-data-dir=<tmp>/pK --children 3`: browser,
# gpu-process, utility, renderer), wait until the sidecar has seen the tree in a scan
# (`leakwarden_trees{family="chromium"}` = 1), SIGKILL the launcher and poll /proc every 10 ms
# until every tree PID is gone (absent, or a zombie). Results: median and max per interval, on
# stdout and in target/bench/detect-latency.md (raw times in target/bench/detect-latency.tsv).
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
FIXTURE=${LW_FIXTURE:-$ROOT/target/debug/lw-fixture}

if [[ ${1:-} != --inner ]]; then
    [[ -x $LW ]] || die "$LW missing: cargo build --release"
    [[ -x $FIXTURE ]] || die "$FIXTURE missing: cargo build -p leakwarden-tests --bins"
    mkdir -p "$BENCH_OUT"
    export LW FIXTURE BENCH_OUT
    unshare --pid --fork --mount-proc --kill-child bash "$0" --inner "$@" &
    up=$!
    trap 'kill -KILL "$up" 2>/dev/null || true' EXIT
    trap 'exit 130' INT TERM
    wait "$up"
    exit $?
fi

# --- inside the namespace: we are PID 1 ---
shift
TRIALS=${1:-20}
shift || true
INTERVALS=("$@")
((${#INTERVALS[@]})) || INTERVALS=(1s 5s)
((BASHPID == 1)) || die "--inner must run as PID 1 of a PID namespace"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lw-detect.XXXXXX")
trap 'kill_started; rm -rf "$tmp"' EXIT
ln -s "$FIXTURE" "$tmp/chromium"
mkfifo "$tmp/tick"
exec 9<>"$tmp/tick"
nap() { read -r -t "$1" -u 9 || true; } # sleep without a fork

cat >"$tmp/policy.yaml" <<EOF
max_kills_per_minute: 100000
families:
  - name: chromium
    kind: browser
    match:
      - comm: '^chromium\$'
rules:
  - name: orphaned-browser-tree
    family: chromium
    when:
      orphaned_for: 0s
    action: kill-tree
    grace: 2s
stale_profiles:
  roots: ['$tmp']
  older_than: 1h
EOF
"$LW" policy check "$tmp/policy.yaml" >/dev/null || die "policy rejected"

TSV=$BENCH_OUT/detect-latency.tsv
MD=$BENCH_OUT/detect-latency.md
printf 'interval\ttrial\tlatency_ms\n' >"$TSV"

# A PID is gone when /proc has no such process or it is a zombie (killed, not yet reaped).
gone() {
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 0
    st=${st##*) }
    [[ ${st:0:1} == Z || ${st:0:1} == X ]]
}

trees_seen() { curl -fs "$url" | metric_sum 'leakwarden_trees' | awk '{ print ($1 >= 1) }'; }

declare -A MED MAX KILLS
for iv in "${INTERVALS[@]}"; do
    port=$(free_port)
    url=http://127.0.0.1:$port/metrics
    "$LW" watch --policy "$tmp/policy.yaml" --interval "$iv" --listen "127.0.0.1:$port" \
        --log-level warn </dev/null >/dev/null 2>"$tmp/lw-$iv.log" &
    lw=$!
    STARTED+=("$lw")
    wait_http "http://127.0.0.1:$port/readyz" 30 || die "sidecar not ready: $(cat "$tmp/lw-$iv.log")"
    lat=()
    for ((k = 1; k <= TRIALS; k++)); do
        out=$tmp/ready-$iv-$k
        "$FIXTURE" launch "$tmp/chromium" "--user-data-dir=$tmp/p-$iv-$k" --children 3 \
            </dev/null >"$out" 2>/dev/null &
        launcher=$!
        line=""
        for ((w = 0; w < 3000; w++)); do
            [[ -s $out ]] && read -r line <"$out" && [[ $line == ready* ]] && break
            nap 0.01
        done
        [[ $line == ready* ]] || die "no ready line from the fixture"
        read -r -a f <<<"$line"
        tree=("${f[@]:2}") # browser and its children
        # The sidecar must know the tree (and hold a pidfd on its owner) before the launcher dies.
        for ((w = 0; w < 1000; w++)); do
            [[ $(trees_seen) == 1 ]] && break
            nap 0.02
        done
        t0=$EPOCHREALTIME
        kill -KILL "$launcher"
        wait "$launcher" 2>/dev/null || true
        deadline=$((SECONDS + 60))
        while ((SECONDS < deadline)); do
            alive=0
            for p in "${tree[@]}"; do gone "$p" || { alive=1; break; }; done
            ((alive)) || break
            nap 0.01
        done
        t1=$EPOCHREALTIME
        if ((alive)); then
            log "interval $iv trial $k: tree still alive after 60 s; killing it"
            kill -KILL "${tree[@]}" 2>/dev/null || true
            ms=60000
        else
            ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", 1000 * (b - a) }')
        fi
        lat+=("$ms")
        printf '%s\t%s\t%s\n' "$iv" "$k" "$ms" >>"$TSV"
        log "interval $iv trial $k: ${ms} ms"
        # Let the sidecar settle (gauges back to 0 trees) before the next trial.
        for ((w = 0; w < 500; w++)); do
            [[ $(trees_seen) == 0 ]] && break
            nap 0.02
        done
    done
    MED[$iv]=$(printf '%s\n' "${lat[@]}" | median)
    MAX[$iv]=$(printf '%s\n' "${lat[@]}" | maxof)
    KILLS[$iv]=$(curl -fs "$url" | awk '/^leakwarden_kills_total/ && $NF > 0 { print }' | tr '\n' ' ')
    kill -KILL "$lw"
    wait "$lw" 2>/dev/null || true
    STARTED=()
done

{
    echo "## Detection latency ($(date -u +%FT%TZ))"
    echo
    machine_info
    echo "- command: \`tests/bench/detect-latency.sh $TRIALS ${INTERVALS[*]}\`; policy: kill-tree on \`orphaned_for: 0s\`, grace 2 s"
    echo
    echo "| scan interval | trials | median ms | max ms | sidecar's kill counters at the end |"
    echo "|---|---|---|---|---|"
    for iv in "${INTERVALS[@]}"; do
        echo "| $iv | $TRIALS | ${MED[$iv]} | ${MAX[$iv]} | \`${KILLS[$iv]% }\` |"
    done
    echo
} | tee "$MD"
