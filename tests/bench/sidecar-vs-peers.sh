#!/usr/bin/env bash
# The sidecar beside what users run today (issue 7, items 1 and 2): `make bench`.
#
#   tests/bench/sidecar-vs-peers.sh [N …]        (default: 1000 3000 20000)
#
# For each N it starts N extra idle processes (`sleep`, by PID, killed by PID at the end) and,
# from N = 20000 on, LW_BENCH_TREES (default 500) fake browser trees (lw-fixture: a launcher, a
# browser named chromium with a profile and 3 children — what a node full of headless sessions
# looks like to a scan), then
# runs side by side on 127.0.0.1 (free ports):
#   - leakwarden watch --dry-run --interval 1s (built-in policy; dry-run so it never signals
#     anything on this machine). It scans on its own timer and a scrape never scans, so its
#     CPU per scan = (utime+stime delta) / (leakwarden_scans_total delta) over the window;
#   - prometheus-process-exporter, every process grouped by comm (config
#     `process_names: [{name: '{{.Comm}}', cmdline: ['.+']}]`), its defaults otherwise
#     (-threads, -gather-smaps on): "pe";
#   - the same with -gather-smaps=false -threads=false: "pe-lean", its cheapest configuration;
#   - prometheus-node-exporter, defaults: "ne".
# Exporters scan on scrape: CPU per scrape = CPU delta / scrapes made. All three run during the same
# window (LW_BENCH_SECONDS, default 30 s) so they see the same load. Then ≥ LW_BENCH_SCRAPES
# (default 12) timed scrapes of each (curl %{time_total}, median and max) and VmRSS / VmHWM.
# The raw floor in CPU time: tests/bench/floor.c (cc -O2) reads stat and statm and stat()s fd/
# for every process, 10 passes right after the window, user+sys per pass from getrusage; the
# sidecar's CPU per scan per process is compared with it. Finally the raw floor against one full
# scan in wall time, from the criterion bench
# (`cargo bench -p leakwarden --bench scan`, LW_BENCH_PROCS=N; it spawns its own N sleeps).
#
# Output: markdown tables on stdout and in target/bench/sidecar-vs-peers.md; raw numbers in
# target/bench/sidecar-vs-peers.tsv. LW_BENCH_SKIP_CRITERION=1 skips the criterion part.
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"

SECONDS_WIN=${LW_BENCH_SECONDS:-30}
SCRAPES=${LW_BENCH_SCRAPES:-12}
NS=("$@")
((${#NS[@]})) || NS=(1000 3000 20000)
FIXTURE=${LW_FIXTURE:-$ROOT/target/release/lw-fixture}
PE=$(command -v prometheus-process-exporter || true)
NE=$(command -v prometheus-node-exporter || true)
[[ -x $LW ]] || die "$LW missing: cargo build --release"
[[ -n $PE && -n $NE ]] || die "exporters missing: scripts/install-deps.sh"

mkdir -p "$BENCH_OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/lw-bench.XXXXXX")
IDLE=()
finish() {
    ((${#IDLE[@]})) && kill -KILL "${IDLE[@]}" 2>/dev/null
    IDLE=()
    kill_started
    rm -rf "$work"
}
trap finish EXIT
trap 'exit 130' INT TERM

# The raw floor in CPU time (tests/bench/floor.c): read stat and statm and stat() fd/ for every
# process, nothing else; user+sys from getrusage, per pass.
cc -O2 -o "$work/floor" "$ROOT/tests/bench/floor.c" || die "cannot build tests/bench/floor.c (cc)"

cat >"$work/pe.yaml" <<'EOF'
process_names:
  - name: '{{.Comm}}'
    cmdline: ['.+']
EOF

TSV=$BENCH_OUT/sidecar-vs-peers.tsv
MD=$BENCH_OUT/sidecar-vs-peers.md
printf 'n\tvisible\tprog\tcpu_ms_per_op\tops\tscrape_med_ms\tscrape_max_ms\trss_kib\thwm_kib\tsamples\tbody_bytes\n' >"$TSV"
{
    echo "## Sidecar vs peers ($(date -u +%FT%TZ))"
    echo
    machine_info
    echo "- prometheus-process-exporter: $($PE -version 2>&1 | head -1)"
    echo "- prometheus-node-exporter: $($NE --version 2>&1 | head -1)"
    echo "- window ${SECONDS_WIN} s, ${SCRAPES} timed scrapes each; command: \`tests/bench/sidecar-vs-peers.sh ${NS[*]}\`"
    echo
} | tee "$MD"

# spawn_trees N: N fake browser trees (launcher + browser + 3 children each), in $work, inside
# a PID namespace of their own so that killing its `unshare` by PID ends every one of them.
spawn_trees() {
    local n=$1
    [[ -x $FIXTURE ]] || die "$FIXTURE missing: make release"
    ln -sf "$FIXTURE" "$work/chromium"
    unshare --pid --fork --mount-proc --kill-child bash -c '
        for ((i = 0; i < $1; i++)); do
            "$2" launch "$3/chromium" "--user-data-dir=$3/p$i" </dev/null >/dev/null 2>&1 &
        done
        wait' trees "$n" "$FIXTURE" "$work" </dev/null >/dev/null 2>&1 &
    STARTED+=($!)
    local want=$((n * 4)) i
    for ((i = 0; i < 600; i++)); do
        (($(pgrep -c -f -- "--user-data-dir=$work/p" || true) >= want)) && return 0
        sleep 0.1
    done
    log "only $(pgrep -c -f -- "--user-data-dir=$work/p" || true) of $want tree processes started"
}

spawn_idle() {
    local n=$1 i
    for ((i = 0; i < n; i++)); do
        sleep 3600 </dev/null >/dev/null 2>&1 &
        IDLE+=($!)
    done
}

scrape_time() { # URL → seconds (time_total), body in $work/body
    curl -fsS -o "$work/body" -w '%{time_total}\n' "$1"
}

declare -A PID PORT URL
run_n() {
    local n=$1 p
    log "N=$n: spawning $n idle processes"
    spawn_idle "$n"
    local trees=0
    if ((n >= 20000)); then trees=${LW_BENCH_TREES:-500}; fi
    if ((trees > 0)); then
        log "N=$n: spawning $trees fake browser trees"
        spawn_trees "$trees"
    fi
    TREES[$n]=$trees
    PORT[lw]=$(free_port)
    "$LW" watch --dry-run --interval 1s --listen "127.0.0.1:${PORT[lw]}" --log-level warn \
        </dev/null >/dev/null 2>"$work/lw.log" &
    PID[lw]=$!
    STARTED+=("${PID[lw]}")
    PORT[pe]=$(free_port)
    "$PE" -config.path "$work/pe.yaml" -web.listen-address "127.0.0.1:${PORT[pe]}" \
        </dev/null >/dev/null 2>"$work/pe.log" &
    PID[pe]=$!
    STARTED+=("${PID[pe]}")
    PORT[pe-lean]=$(free_port)
    "$PE" -config.path "$work/pe.yaml" -gather-smaps=false -threads=false \
        -web.listen-address "127.0.0.1:${PORT[pe-lean]}" </dev/null >/dev/null 2>"$work/pel.log" &
    PID[pe-lean]=$!
    STARTED+=("${PID[pe-lean]}")
    PORT[ne]=$(free_port)
    "$NE" --web.listen-address="127.0.0.1:${PORT[ne]}" </dev/null >/dev/null 2>"$work/ne.log" &
    PID[ne]=$!
    STARTED+=("${PID[ne]}")
    for p in lw pe pe-lean ne; do URL[$p]="http://127.0.0.1:${PORT[$p]}/metrics"; done
    wait_http "http://127.0.0.1:${PORT[lw]}/readyz" 30 || die "leakwarden not ready: $(cat "$work/lw.log")"
    for p in pe pe-lean ne; do wait_http "${URL[$p]}" 30 || die "$p not up: $(cat "$work/$p.log" 2>/dev/null)"; done
    # Warm-up: first scrapes fill the exporters' caches; the sidecar has done ≥ 1 scan.
    sleep 2
    for p in pe pe-lean ne pe pe-lean ne; do curl -fs -o /dev/null "${URL[$p]}"; done
    local visible
    visible=$(visible_procs)
    log "N=$n: $visible processes visible; CPU window ${SECONDS_WIN}s"

    # CPU window: the sidecar scans on its own; the exporters are scraped in turn, back to back.
    local -A t0 t1 ops lat
    local b0 b1 s0 s1 end
    b0=$(curl -fs "${URL[lw]}")
    s0=$(metric_sum leakwarden_scans_total <<<"$b0")
    for p in lw pe pe-lean ne; do t0[$p]=$(cpu_ticks "${PID[$p]}"); ops[$p]=0; lat[$p]=""; done
    end=$((SECONDS + SECONDS_WIN))
    while ((SECONDS < end)); do
        for p in pe pe-lean ne; do
            lat[$p]+="$(scrape_time "${URL[$p]}") "
            ops[$p]=$((ops[$p] + 1))
        done
        sleep 0.2
    done
    for p in lw pe pe-lean ne; do t1[$p]=$(cpu_ticks "${PID[$p]}"); done
    b1=$(curl -fs "${URL[lw]}")
    s1=$(metric_sum leakwarden_scans_total <<<"$b1")
    # Wall time per scan over the window, from the sidecar's own histogram.
    SCAN_WALL_MS[$n]=$(awk -v a="$(metric_sum leakwarden_scan_duration_seconds_sum <<<"$b0")" \
        -v b="$(metric_sum leakwarden_scan_duration_seconds_sum <<<"$b1")" \
        -v c="$(metric_sum leakwarden_scan_duration_seconds_count <<<"$b0")" \
        -v d="$(metric_sum leakwarden_scan_duration_seconds_count <<<"$b1")" \
        'BEGIN { printf "%.2f", (d > c ? 1000 * (b - a) / (d - c) : 0) }')
    ops[lw]=$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')

    # The floor, same processes, right after the window (10 passes).
    read -r FLOOR_PROCS[$n] FLOOR_CPU_US[$n] FLOOR_WALL_US[$n] < <("$work/floor" 10)

    # Scrape latency of the sidecar (a pre-rendered snapshot), then more for every peer if the
    # window gave fewer than SCRAPES.
    for ((i = 0; i < SCRAPES; i++)); do
        lat[lw]+="$(scrape_time "${URL[lw]}") "
        sleep 0.05
    done
    for p in pe pe-lean ne; do
        while (($(wc -w <<<"${lat[$p]}") < SCRAPES)); do lat[$p]+="$(scrape_time "${URL[$p]}") "; done
    done

    # The floor of curl + loopback + the sidecar's HTTP stack under the same load: /healthz.
    local hz=""
    for ((i = 0; i < SCRAPES; i++)); do
        hz+="$(scrape_time "http://127.0.0.1:${PORT[lw]}/healthz") "
        sleep 0.05
    done
    HEALTHZ_MS[$n]=$(tr ' ' '\n' <<<"$hz" | grep . | median | awk '{ printf "%.2f", 1000 * $1 }')
    VISIBLE[$n]=$visible
    for p in lw pe pe-lean ne; do
        local cpu_ms med mx rss hwm samples bytes
        cpu_ms=$(awk -v a="${t0[$p]}" -v b="${t1[$p]}" -v o="${ops[$p]}" -v hz="$CLK_TCK" \
            'BEGIN { printf "%.2f", o ? 1000 * (b - a) / hz / o : 0 }')
        med=$(tr ' ' '\n' <<<"${lat[$p]}" | grep . | median | awk '{ printf "%.2f", 1000 * $1 }')
        mx=$(tr ' ' '\n' <<<"${lat[$p]}" | grep . | maxof | awk '{ printf "%.2f", 1000 * $1 }')
        rss=$(vm_kib "${PID[$p]}" VmRSS)
        hwm=$(vm_kib "${PID[$p]}" VmHWM)
        curl -fs -o "$work/body" "${URL[$p]}"
        samples=$(grep -vc '^#' "$work/body" || true)
        bytes=$(stat -c %s "$work/body")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$visible" "$p" "$cpu_ms" \
            "${ops[$p]}" "$med" "$mx" "$rss" "$hwm" "$samples" "$bytes" >>"$TSV"
    done
    LOAD[$n]=$(cut -d' ' -f1-3 /proc/loadavg)
    kill_started
    kill -KILL "${IDLE[@]}" 2>/dev/null || true
    wait "${IDLE[@]}" 2>/dev/null || true
    IDLE=()
}

declare -A FLOOR_PROCS FLOOR_CPU_US FLOOR_WALL_US HEALTHZ_MS SCAN_WALL_MS VISIBLE LOAD RAW FULL CRIT_PROCS TREES
criterion() {
    local n=$1 err grp
    err=$work/criterion-$n.log
    log "N=$n: criterion (raw floor vs full scan)"
    (cd "$ROOT" && LW_BENCH_PROCS=$n cargo bench -q -p leakwarden --bench scan -- --noplot) \
        >"$work/criterion-$n.out" 2>"$err" || { log "criterion failed: $(tail -5 "$err")"; return 0; }
    CRIT_PROCS[$n]=$(sed -n 's/.*processes visible: \([0-9]*\).*/\1/p' "$err" | head -1)
    grp=$ROOT/target/criterion/scan_${CRIT_PROCS[$n]}_procs
    RAW[$n]=$(jq '.median.point_estimate' "$grp/raw_floor/new/estimates.json")
    FULL[$n]=$(jq '.median.point_estimate' "$grp/full_scan/new/estimates.json")
}

for n in "${NS[@]}"; do
    run_n "$n"
    if [[ ${LW_BENCH_SKIP_CRITERION:-0} != 1 ]]; then criterion "$n"; fi
done

# Tables.
{
    echo "### Side by side (same window, same processes)"
    echo
    echo "| N extra | visible | program | CPU ms per scan/scrape | scans/scrapes | µs CPU per process | scrape median ms | scrape max ms | VmRSS MiB | VmHWM MiB | samples exposed | load avg |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' -v OFS=' | ' 'NR > 1 {
        name = $3 == "lw" ? "leakwarden watch" : $3 == "pe" ? "process-exporter (defaults)" : $3 == "pe-lean" ? "process-exporter (-gather-smaps=false -threads=false)" : "node-exporter"
        per = $3 == "ne" ? "—" : sprintf("%.2f", 1000 * $4 / $2)
        print "| " $1, $2, name, $4, $5, per, $6, $7, sprintf("%.1f", $8 / 1024), sprintf("%.1f", $9 / 1024), $10, "LOAD" $1 " |"
    }' "$TSV" | while IFS= read -r line; do
        n=$(sed 's/^| \([0-9]*\) .*/\1/' <<<"$line")
        echo "${line/LOAD$n/${LOAD[$n]}}"
    done
    echo
    echo "Fake browser trees beside the idle processes:$(for n in "${NS[@]}"; do printf ' N=%s: %s;' "$n" "${TREES[$n]:-0}"; done) (the sidecar's RSS target at N=20000 with 500 trees: < 20 MiB)"
    echo
    echo "Scrape floor under the same load (curl + loopback + the sidecar's HTTP stack, GET /healthz, median):$(for n in "${NS[@]}"; do printf ' N=%s: %s ms;' "$n" "${HEALTHZ_MS[$n]}"; done)"
    echo
    echo "### Ratios (peer ÷ leakwarden, same N, same window)"
    echo
    echo "| N extra | peer | CPU per scrape ÷ sidecar CPU per scan | scrape latency ÷ | RSS ÷ |"
    echo "|---|---|---|---|---|"
    awk -F'\t' 'NR > 1 { cpu[$1, $3] = $4; lat[$1, $3] = $6; rss[$1, $3] = $8; ns[$1] = 1 }
        END {
            for (n in ns) for (p = 1; p <= 3; p++) {
                q = p == 1 ? "pe" : p == 2 ? "pe-lean" : "ne"
                printf "| %s | %s | %.1f× | %.1f× | %.1f× |\n", n, q, cpu[n, q] / cpu[n, "lw"], lat[n, q] / lat[n, "lw"], rss[n, q] / rss[n, "lw"]
            }
        }' "$TSV" | sort -t'|' -k2,2n -k3,3
    echo
    echo "### Sidecar CPU per scan against the raw floor in CPU time (same processes, same run)"
    echo
    echo "| N extra | visible | floor CPU µs/proc (floor.c, 10 passes) | floor wall µs/proc | sidecar CPU µs/proc per scan (whole watch process) | sidecar ÷ floor |"
    echo "|---|---|---|---|---|---|"
    for n in "${NS[@]}"; do
        awk -F'\t' -v n="$n" -v fp="${FLOOR_PROCS[$n]}" -v fc="${FLOOR_CPU_US[$n]}" -v fw="${FLOOR_WALL_US[$n]}" \
            'NR > 1 && $1 == n && $3 == "lw" { printf "| %s | %s | %.2f | %.2f | %.2f | %.2f |\n", n, $2, fc / fp, fw / fp, 1000 * $4 / $2, (1000 * $4 / $2) / (fc / fp) }' "$TSV"
    done
    echo
    echo "### Sidecar scan: wall time from its own histogram, and the raw floor (criterion)"
    echo
    echo "| N extra | visible (watch) | watch scan wall ms (mean over the window) | criterion procs | raw floor µs/proc | full scan µs/proc | full ÷ floor |"
    echo "|---|---|---|---|---|---|---|"
    for n in "${NS[@]}"; do
        if [[ -n ${RAW[$n]:-} ]]; then
            awk -v n="$n" -v v="${VISIBLE[$n]}" -v w="${SCAN_WALL_MS[$n]}" -v c="${CRIT_PROCS[$n]}" \
                -v r="${RAW[$n]}" -v f="${FULL[$n]}" \
                'BEGIN { printf "| %s | %s | %s | %s | %.2f | %.2f | %.2f |\n", n, v, w, c, r / c / 1000, f / c / 1000, f / r }'
        else
            echo "| $n | ${VISIBLE[$n]} | ${SCAN_WALL_MS[$n]} | — | — | — | — |"
        fi
    done
    echo
} | tee -a "$MD"
log "written: $MD, $TSV"
