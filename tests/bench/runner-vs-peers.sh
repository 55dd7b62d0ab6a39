#!/usr/bin/env bash
# leakwarden-runner against the session runners people use today, on the same job, same machine,
# same run (issue 9). `make bench-runner` runs it after `cargo build --release`.
#
# The job, for every tool: a new isolated context (a new browser for the naive baseline) →
# navigate three pages of a static site on 127.0.0.1 (tests/bench/runner-peers/site: an index with
# links and a form, 200 table rows, a title set from JS after 200 ms) → wait for the late title,
# evaluate the title and an element count → one PNG screenshot → close.
#
# Tools: leakwarden-runner (target/release, job tests/bench/runner-peers/job.yaml), Playwright for
# Python (one browser, new context per session, asyncio + semaphore), puppeteer-cluster
# (CONCURRENCY_CONTEXT) and naive browser-per-session puppeteer-core. All drive the system
# Chromium; the peers are installed by this script into target/bench-peers (pip venv + npm), and no
# browser is ever downloaded.
#
# Every cell runs inside a private PID namespace (its PID 1 is runner-peers/cell.py) and a cpuacct
# cgroup of its own, with TMPDIR set to the cell's own directory, so processes and directories
# left are counted for that cell only and cleaned up by killing that namespace only.
#
# Environment (defaults give the full bench, ~40 min on 2 cores):
#   BENCH_SESSIONS=40          sessions per cell
#   BENCH_REPS=3               repetitions of every (tool, concurrency) cell
#   BENCH_CONCURRENCY="1 2 4"  concurrency levels
#   BENCH_TOOLS="runner playwright cluster naive"
#   BENCH_KILL=1               also the SIGKILL-mid-session run per tool (concurrency 2)
#   BENCH_OUT=target/bench-runner/<UTC time>   where cells, results.json, results.md, chart go
#   BENCH_PORT=18631           port of the static site (inside each cell, on 127.0.0.1)
#   BENCH_PUBLISH=0            1: copy the chart to docs/img/runner-vs-peers.png
#   BENCH_RUNNER=target/release/leakwarden-runner   (copied into BENCH_OUT first)
#   CHROMIUM=/usr/lib/chromium/chromium
# Quick look: BENCH_SESSIONS=8 BENCH_REPS=1 BENCH_CONCURRENCY=2 tests/bench/runner-vs-peers.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/bench/runner-peers"
SESSIONS=${BENCH_SESSIONS:-40}
REPS=${BENCH_REPS:-3}
CONC=${BENCH_CONCURRENCY:-1 2 4}
TOOLS=${BENCH_TOOLS:-runner playwright cluster naive}
KILL=${BENCH_KILL:-1}
PORT=${BENCH_PORT:-18631}
CHROMIUM=${CHROMIUM:-/usr/lib/chromium/chromium}
OUT=${BENCH_OUT:-$ROOT/target/bench-runner/$(date -u +%Y%m%dT%H%M%SZ)}
PEERS="$ROOT/target/bench-peers"
RUNNER=${BENCH_RUNNER:-$ROOT/target/release/leakwarden-runner}
PYTHON=${PYTHON:-python3}

die() { echo "runner-vs-peers: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (PID namespaces, cgroups)"
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM (./scripts/install-deps.sh installs it)"
command -v node >/dev/null || die "node not found"
case " $TOOLS " in
  *" runner "*) [ -x "$RUNNER" ] || (cd "$ROOT" && cargo build --release -p leakwarden-runner) ;;
esac

# --- peers, installed into a directory this script owns ---------------------------------------
mkdir -p "$PEERS"
if [ ! -x "$PEERS/venv/bin/python" ] || ! "$PEERS/venv/bin/python" -c 'import playwright, matplotlib' 2>/dev/null; then
  echo "== installing Playwright for Python (no browser download) into $PEERS/venv"
  "$PYTHON" -m venv "$PEERS/venv"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PEERS/venv/bin/pip" install -q playwright matplotlib
fi
if [ ! -d "$PEERS/node_modules/puppeteer-cluster" ] || [ ! -d "$PEERS/node_modules/puppeteer-core" ]; then
  echo "== installing puppeteer-core and puppeteer-cluster (no browser download) into $PEERS"
  [ -f "$PEERS/package.json" ] || echo '{"name":"lw-bench-peers","private":true}' > "$PEERS/package.json"
  # --ignore-scripts: puppeteer (puppeteer-cluster's peer) would download a browser on install.
  (cd "$PEERS" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --ignore-scripts \
    puppeteer-core puppeteer-cluster >/dev/null)
fi

# --- cgroup v1 cpuacct (or v2) for per-cell CPU ---------------------------------------------
CG_BASE=""
if [ -d /sys/fs/cgroup/cpuacct ] && [ -w /sys/fs/cgroup/cpuacct ]; then
  CG_BASE=/sys/fs/cgroup/cpuacct; CG_FILE=cpuacct.usage
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
  CG_BASE=/sys/fs/cgroup; CG_FILE=cpu.stat
fi

mkdir -p "$OUT/cells"
# The bench runs a copy, so a rebuild while it runs cannot mix two runners in one table.
if [ -x "$RUNNER" ]; then
  cp "$RUNNER" "$OUT/leakwarden-runner"
  RUNNER="$OUT/leakwarden-runner"
fi
{
  echo "date_utc: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -1)"
  [ ! -x "$RUNNER" ] || echo "leakwarden-runner: $("$RUNNER" --version) (git $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- runner || echo '+uncommitted runner/ changes'))"
  echo "playwright (python): $("$PEERS/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
  echo "puppeteer-core: $(node -p "require('$PEERS/node_modules/puppeteer-core/package.json').version")"
  echo "puppeteer-cluster: $(node -p "require('$PEERS/node_modules/puppeteer-cluster/package.json').version")"
  echo "node: $(node --version)"
  echo "python: $("$PEERS/venv/bin/python" --version | cut -d' ' -f2)"
  echo "sessions_per_cell: $SESSIONS"
  echo "repetitions: $REPS"
  echo "concurrency: $CONC"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# A cell runs under `timeout`, which puts itself in a process group of its own: a SIGTERM or a
# Ctrl-C of this script would not reach it, and the cell's browsers would run on. Stopping the
# script stops the cell in progress: `timeout` passes the signal to the cell's `unshare`, whose
# --kill-child takes the whole PID namespace with it.
CELL_PID=""
stop_cell() {
  if [ -n "$CELL_PID" ]; then
    kill -TERM "$CELL_PID" 2>/dev/null || true
    wait "$CELL_PID" 2>/dev/null || true
  fi
  exit 143
}
trap stop_cell TERM INT HUP

# run_cell NAME TOOL MODE SESSIONS CONCURRENCY
run_cell() {
  local name=$1 tool=$2 mode=$3 n=$4 c=$5
  local dir="$OUT/cells/$name" cg="" cgfile="" tmp
  mkdir -p "$dir"
  tmp=$(mktemp -d /tmp/lwbXXXXXX)
  if [ -n "$CG_BASE" ]; then
    cg="$CG_BASE/lwbench-$$-$name"
    mkdir -p "$cg"
    cgfile="$cg/$CG_FILE"
  fi
  echo "== $name ($(cut -d' ' -f1 /proc/loadavg) load)"
  # The cell enters its cgroup, then becomes PID 1 of a fresh PID namespace.
  set +e
  timeout --signal=KILL 900 sh -c '
    cg=$1; shift
    [ -n "$cg" ] && echo $$ > "$cg/cgroup.procs"
    exec unshare --pid --fork --mount-proc --kill-child "$@"' sh "$cg" \
    "$PYTHON" "$HERE/cell.py" --tool "$tool" --mode "$mode" --sessions "$n" --concurrency "$c" \
    --cell-dir "$dir" --tmp "$tmp" --site "$HERE/site" --port "$PORT" --peers "$PEERS" --runner "$RUNNER" \
    --job "$HERE/job.yaml" --chromium "$CHROMIUM" ${cgfile:+--cpuacct "$cgfile"} \
    > "$dir/cell.out" 2> "$dir/cell.err" &
  CELL_PID=$!
  wait "$CELL_PID"
  local rc=$?
  CELL_PID=""
  set -e
  [ $rc = 0 ] || echo "   cell exited $rc (see $dir/cell.err)"
  tail -n1 "$dir/cell.out" | cut -c1-220
  # Whatever the cell's TMPDIR still holds was counted; remove it now (it is the cell's own).
  rm -rf "$tmp" "$dir/out"
  [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
}

# Repetition outermost, tool order rotated per repetition, so slow drift of the machine's load
# spreads over all tools instead of landing on one.
read -r -a TOOL_ARR <<< "$TOOLS"
for rep in $(seq 1 "$REPS"); do
  for c in $CONC; do
    k=${#TOOL_ARR[@]}
    for j in $(seq 0 $((k - 1))); do
      tool=${TOOL_ARR[$(((j + rep - 1) % k))]}
      run_cell "$tool-c$c-r$rep" "$tool" clean "$SESSIONS" "$c"
    done
  done
done
if [ "$KILL" = 1 ]; then
  for tool in "${TOOL_ARR[@]}"; do
    run_cell "$tool-kill" "$tool" kill 40 2
  done
fi

"$PEERS/venv/bin/python" "$HERE/report.py" "$OUT"
if [ "${BENCH_PUBLISH:-0}" = 1 ]; then
  mkdir -p "$ROOT/docs/img"
  cp "$OUT/runner-vs-peers.png" "$ROOT/docs/img/runner-vs-peers.png"
  echo "chart copied to docs/img/runner-vs-peers.png"
fi
echo "results: $OUT/results.md, $OUT/results.json, $OUT/runner-vs-peers.png"
