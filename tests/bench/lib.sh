# Shared helpers for tests/bench/*.sh (sourced, not run).
# Every process a script starts is recorded in STARTED and killed by PID on exit: never by name.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LW=${LW:-$ROOT/target/release/leakwarden}
LW_RUNNER=${LW_RUNNER:-$ROOT/target/release/leakwarden-runner}
BENCH_OUT=${BENCH_OUT:-$ROOT/target/bench}
CLK_TCK=$(getconf CLK_TCK)
STARTED=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Kill every PID we started (SIGKILL; they are our unreaped children, so the PIDs are still ours).
kill_started() {
    local p
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${STARTED[@]}"; do wait "$p" 2>/dev/null || true; done
    STARTED=()
}

# A free TCP port on 127.0.0.1 (random, checked with ss; a race with another program is unlikely).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if [[ -z $(ss -Htln "sport = :$p" 2>/dev/null) ]]; then
            echo "$p"
            return
        fi
    done
}

# utime+stime of a process (all its threads, dead ones included), in clock ticks.
cpu_ticks() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}

# VmRSS / VmHWM of a process in KiB.
vm_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Open FDs of a process.
fd_count() { local a=("/proc/$1/fd"/*); echo "${#a[@]}"; }

# Processes visible in /proc.
visible_procs() { local a=(/proc/[0-9]*); echo "${#a[@]}"; }

# Wait until URL answers 200 (up to $2 seconds).
wait_http() {
    local url=$1 t=${2:-20} i
    for ((i = 0; i < t * 10; i++)); do
        curl -fs -o /dev/null "$url" && return 0
        sleep 0.1
    done
    return 1
}

# One metric's value (sum over its label sets) from a Prometheus text body on stdin.
metric_sum() {
    awk -v n="$1" '
        $1 == n || index($1, n "{") == 1 { s += $NF; found = 1 }
        END { if (found) printf "%.6f\n", s; else print "nan" }'
}

# Median, max of numbers on stdin (one a line).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
maxof() { sort -g | tail -1; }

# Machine description for the report.
machine_info() {
    echo "- machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- leakwarden: git $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- sidecar runner 2>/dev/null || echo ' (sidecar/runner with uncommitted changes)')"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: other builds and tests run concurrently)"
}
