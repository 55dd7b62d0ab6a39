# tests/incidents/lib.sh — shared by the incident replays (sourced, never run).
#
# Every replay runs in a private PID namespace whose PID 1 is the sidecar itself
# (`unshare --pid --fork --mount-proc --kill-child leakwarden watch …`): it watches every process
# of the scenario from before its start, sees parents change, reaps what is reparented to it, and
# when the replay ends (or fails, or is interrupted) SIGKILLing our `unshare` takes the whole
# namespace down. Scenario processes enter the namespace with `nsenter --pid --mount`.
# Every file of a replay lives in one work directory ($W); the sidecar's policies name it as their
# only stale-profile root and browsers get TMPDIR=$W, so nothing touches the machine's /tmp.
#
# Artifacts for the Rust tests (tests/tests/incident_replays.rs) go to $LW_INCIDENT_OUT when set:
# metrics snapshots, scan JSON, cleanup output, ps listings, timings.env (epoch seconds of the
# fault, the detection and the cleanup).

set -euo pipefail

LW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LW_BIN_DIR:-$LW_ROOT/target/debug}
LW=$BIN/leakwarden
RUNNER=$BIN/leakwarden-runner
FIXTURE=$BIN/lw-fixture
INCIDENT=${INCIDENT:-incident}
# Short: the runner refuses a run directory whose browser socket paths would exceed unix limits.
W=$(mktemp -d "/tmp/lwi-XXXXXX")
chmod 755 "$W"
mkdir -p "$W/bin" "$W/home"
OUT=${LW_INCIDENT_OUT:-$W/out}
mkdir -p "$OUT"
echo "$W" >"$OUT/workdir"
: >"$OUT/timings.env"
T0=$(date +%s.%N)
UNSHARE_PID=
INIT=
SIDECAR=
PROM_PID=
declare -a BG_PIDS=()

CHROME_FLAGS=(--headless --no-sandbox --disable-background-networking --disable-component-update
  --no-first-run --disable-sync --disable-gpu --disable-dev-shm-usage)

die() { echo "REPLAY FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$T0" -v b="$(now)" 'BEGIN{printf "%5.1fs", b-a}'; }
say() { printf '[%s] %s\n' "$(elapsed)" "$*"; }
banner() { printf '\n=== %s ===\n' "$*"; }
# mark NAME: record the moment NAME (fault, detected, cleaned, …) in timings.env.
mark() { echo "$1=$(now)" >>"$OUT/timings.env"; }
since() { # since NAME: seconds from the mark NAME to now
  local t
  t=$(grep "^$1=" "$OUT/timings.env" | tail -1 | cut -d= -f2)
  awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'
}
between() { # between A B: seconds from mark A to mark B
  local a b
  a=$(grep "^$1=" "$OUT/timings.env" | tail -1 | cut -d= -f2)
  b=$(grep "^$2=" "$OUT/timings.env" | tail -1 | cut -d= -f2)
  awk -v a="$a" -v b="$b" 'BEGIN{printf "%.1f", b-a}'
}

teardown() {
  local rc=$?
  set +e
  if [[ -n $PROM_PID ]]; then kill "$PROM_PID" 2>/dev/null; wait "$PROM_PID" 2>/dev/null; fi
  for p in "${BG_PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [[ -n $UNSHARE_PID ]]; then
    # --kill-child: SIGKILL to unshare kills the namespace's PID 1 and with it everything inside.
    kill -9 "$UNSHARE_PID" 2>/dev/null
    wait "$UNSHARE_PID" 2>/dev/null
  fi
  if [[ -n ${LW_INCIDENT_OUT:-} ]]; then
    cp "$W"/*.log "$OUT"/ 2>/dev/null
  fi
  if [[ -z ${LW_KEEP:-} ]]; then rm -rf "$W"; else echo "kept $W" >&2; fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# try_until TIMEOUT_S CMD… — poll CMD every 200 ms until it succeeds (0) or the time is up (1).
try_until() {
  local timeout=$1
  shift
  local end
  end=$(awk -v t="$(now)" -v d="$timeout" 'BEGIN{printf "%.3f", t+d}')
  until "$@"; do
    if awk -v t="$(now)" -v e="$end" 'BEGIN{exit !(t>e)}'; then
      return 1
    fi
    sleep 0.2
  done
}
# wait_until DESC TIMEOUT_S CMD… — the same, and the replay fails when the time is up.
wait_until() {
  local desc=$1
  shift
  try_until "$@" || die "timed out after ${1}s waiting for: $desc"
}

# ns_start POLICY [WATCH ARGS…] — the namespace, with `leakwarden watch` as its PID 1.
ns_start() {
  local policy=$1
  shift
  "$LW" policy check "$policy" >/dev/null || die "invalid policy $policy"
  unshare --pid --fork --mount-proc --kill-child \
    "$LW" watch --policy "$policy" --listen 127.0.0.1:0 --interval 200ms --log-format json "$@" \
    </dev/null >/dev/null 2>"$W/sidecar.log" &
  UNSHARE_PID=$!
  wait_until "the namespace's PID 1" 10 _find_init
  wait_until "the sidecar's listen address" 20 _find_addr
  wait_until "the sidecar's /readyz" 20 curl -fs -o /dev/null "http://$SIDECAR/readyz"
  say "sidecar: PID 1 of a private PID namespace (host pid $INIT), metrics at http://$SIDECAR/metrics"
}
_find_init() {
  INIT=$(cut -d' ' -f1 "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null) || return 1
  [[ -n $INIT && -e /proc/$INIT/root/proc/1 ]]
}
_find_addr() {
  SIDECAR=$(grep watching "$W/sidecar.log" 2>/dev/null |
    grep -o '127\.0\.0\.1:[1-9][0-9]*' | head -1) || return 1
  [[ -n $SIDECAR ]]
}

# nsrun CMD… — run CMD inside the namespace (its PID 1 is the sidecar; CMD sees PPID 0).
nsrun() { nsenter --target "$INIT" --pid --mount -- "$@"; }
# nsbg CMD… — the same in the background; the nsenter's host PID is appended to BG_PIDS.
nsbg() {
  nsenter --target "$INIT" --pid --mount -- "$@" &
  BG_PIDS+=($!)
  disown $!
}

NSPROC() { echo "/proc/$INIT/root/proc"; }
# ns_ps — every process of the namespace: PID PPID STATE COMM CMDLINE (cmdline cut at 150 chars).
ns_ps() {
  local d pid st comm cmd rest
  for d in "$(NSPROC)"/[0-9]*; do
    pid=${d##*/}
    st=$(cat "$d/stat" 2>/dev/null) || continue
    comm=${st#*(}
    comm=${comm%)*}
    rest=${st##*) }
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-150)
    printf '%s %s %s %s %s\n' "$pid" "$(echo "$rest" | cut -d' ' -f2)" "$(echo "$rest" | cut -d' ' -f1)" "$comm" "$cmd"
  done | sort -n
}
# ns_count REGEX — live (non-zombie) processes whose "COMM CMDLINE" matches REGEX.
ns_count() {
  ns_ps | awk '$3 != "Z"' | cut -d' ' -f4- | grep -Ec -- "$1" || true
}
ns_pid_of() { # ns_pid_of REGEX — first live namespace PID whose "COMM CMDLINE" matches
  local line
  while read -r line; do
    if [[ ${line#* * * } =~ $1 ]]; then
      echo "${line%% *}"
      return 0
    fi
  done < <(ns_ps | awk '$3 != "Z"')
  return 0
}
ns_alive() { [[ -e $(NSPROC)/$1/stat ]] && [[ $(ns_ps | awk -v p="$1" '$1==p{print $3}') != Z ]]; }
# ns_host_pid NSPID — host PID of a namespace PID (NSpid's last field).
ns_host_pid() {
  local d
  for d in /proc/[0-9]*; do
    [[ $(readlink "$d/ns/pid" 2>/dev/null) == "$(readlink "/proc/$INIT/ns/pid")" ]] || continue
    if grep -Eq "^NSpid:.*[[:space:]]$1\$" "$d/status" 2>/dev/null; then
      echo "${d##*/}"
      return 0
    fi
  done
  return 1
}
# ns_kill SIG NSPID — signal a scenario process (by its host PID, checked to be in our namespace).
ns_kill() {
  local hp
  hp=$(ns_host_pid "$2") || die "namespace pid $2 not found"
  kill "-$1" "$hp"
}

metrics() { curl -fs "http://${1:-$SIDECAR}/metrics"; }
# metric NAME [LABEL_SUBSTRING…] — sum of the samples of NAME whose label set contains every
# substring (e.g. 'family="chromium"'); empty when there is no such sample.
metric() {
  local name=$1
  shift
  metrics "${METRICS_ADDR:-$SIDECAR}" | awk -v n="$name" -v want="$*" '
    BEGIN { k = split(want, w, " ") }
    $1 !~ /^#/ {
      split($1, a, "{"); if (a[1] != n) next
      for (i = 1; i <= k; i++) if (index($1, w[i]) == 0) next
      s += $NF; found = 1 }
    END { if (found) printf "%g\n", s }'
}
# metric_cmp NAME OP VALUE [LABELS…] — e.g. metric_cmp leakwarden_orphan_trees '>=' 2 'family="chromium"'
metric_cmp() {
  local name=$1 op=$2 v=$3
  shift 3
  local got
  got=$(metric "$name" "$@")
  [[ -n $got ]] && awk -v a="$got" -v b="$v" "BEGIN{exit !(a $op b)}"
}
# fresh_scan WHAT — wait until the sidecar's metrics come from a scan of /proc begun after this
# call (WHAT says after what): two more completed scans, since one may have been under way. A
# count read at once after a bot's exit can come from a scan taken while the bot was closing
# its own browsers, whose last processes are orphans for that moment.
fresh_scan() {
  local n0
  n0=$(metric leakwarden_scans_total) || n0=
  [[ -n $n0 ]] || die "no leakwarden_scans_total from the sidecar"
  _scanned_since() { metric_cmp leakwarden_scans_total '>=' "$(awk -v n="$n0" 'BEGIN{print n + 2}')"; }
  wait_until "a scan of /proc begun after $1" 10 _scanned_since
}
# show_metrics REGEX — the sidecar's metric lines matching REGEX (what a person would grep).
show_metrics() { { metrics "${2:-$SIDECAR}" | grep -E "$1" | grep -v '^#' | sed 's/^/  /'; } || true; }
save_metrics() { metrics "${2:-$SIDECAR}" >"$OUT/$1"; }

scan_json() { nsrun "$LW" scan --policy "$1" --format json; }
scan_table() { nsrun "$LW" scan --policy "$1" --format table; }
# cleanup_run NAME POLICY [ARGS…] — `leakwarden cleanup` in the namespace; stdout, stderr (audit
# lines) and the exit code saved as $OUT/cleanup-NAME.{out,err,code}; prints the table, or a
# summary of the JSON report.
cleanup_run() {
  local name=$1 policy=$2 rc=0
  shift 2
  nsrun "$LW" cleanup --policy "$policy" "$@" >"$OUT/cleanup-$name.out" 2>"$OUT/cleanup-$name.err" || rc=$?
  echo "$rc" >"$OUT/cleanup-$name.code"
  echo "\$ leakwarden cleanup $*   → exit $rc"
  if [[ " $* " == *" json "* ]]; then
    jq -r '.items[] | "  \(.rule)  \(.action)  \(.what)  → \(.result)"' "$OUT/cleanup-$name.out" | cut -c1-200
  else
    sed 's/^/  /' "$OUT/cleanup-$name.out" | cut -c1-200
  fi
}

# A fixture symlink in $W (its file name becomes the process's comm).
fixture_link() {
  [[ -e $W/$1 ]] || ln -s "$FIXTURE" "$W/$1"
  echo "$W/$1"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# prom_start TARGET… (job=ADDR pairs, e.g. leakwarden=127.0.0.1:1234) — a real Prometheus on
# loopback, scraping every second and evaluating alerts/leakwarden.rules.yaml every second. The
# rules are used as written except `for:`, set to 0s: the fast form replays minutes in seconds.
prom_start() {
  command -v prometheus >/dev/null || { say "prometheus not installed: alerts not evaluated"; return 0; }
  local port cfg=$W/prometheus.yml t job addr
  port=$(free_port)
  sed -E 's/^( *)for: .*/\1for: 0s/' "$LW_ROOT/alerts/leakwarden.rules.yaml" >"$W/rules.yaml"
  {
    echo "global: {scrape_interval: 1s, evaluation_interval: 1s}"
    echo "rule_files: ['$W/rules.yaml']"
    echo "scrape_configs:"
    for t in "$@"; do
      job=${t%%=*}
      addr=${t#*=}
      echo "  - job_name: '$job'"
      echo "    static_configs: [{targets: ['$addr']}]"
    done
  } >"$cfg"
  prometheus --config.file="$cfg" --storage.tsdb.path="$W/prom" \
    --web.listen-address="127.0.0.1:$port" >"$W/prometheus.log" 2>&1 &
  PROM_PID=$!
  PROM=127.0.0.1:$port
  wait_until "Prometheus ready" 30 curl -fs -o /dev/null "http://$PROM/-/ready"
  # Ready is not scraping: Prometheus's discovery manager hands the first target set to the
  # scrape manager up to 5 s after start, whatever scrape_interval says. A process that lives
  # only a few seconds after `ready` (a bot run) can end before its first scrape. Wait until
  # every target has been tried once (health up or down, no longer "unknown").
  wait_until "Prometheus to start scraping its targets" 30 _prom_scraping "$#"
  say "prometheus: http://$PROM (scrape 1s, rules from alerts/ with for: 0s)"
}
_prom_scraping() {
  curl -fs "http://$PROM/api/v1/targets" | jq -e --argjson n "$1" \
    '.data.activeTargets | length == $n and all(.health != "unknown")' >/dev/null
}
# prom_scraped JOB — Prometheus has at least one successful scrape of JOB.
prom_scraped() {
  prom_query "max_over_time(up{job=\"$1\"}[1h]) == 1" |
    jq -e '.data.result | length > 0' >/dev/null
}
# prom_query EXPR — instant query, JSON.
prom_query() { curl -fs "http://$PROM/api/v1/query" --data-urlencode "query=$1"; }
# alert_firing NAME — true once Prometheus has the alert NAME firing; saves it as $OUT/alert-NAME.json.
alert_firing() {
  [[ -n $PROM_PID ]] || return 0
  curl -fs "http://$PROM/api/v1/alerts" |
    jq -e --arg n "$1" '[.data.alerts[] | select(.labels.alertname == $n and .state == "firing")] | if length > 0 then . else empty end' \
      >"$OUT/alert-$1.json" 2>/dev/null
}
# show_alert NAME — print the firing alert's labels and description.
show_alert() {
  [[ -s $OUT/alert-$1.json ]] || return 0
  jq -r '.[] | "  ALERT \(.labels.alertname) [\(.labels.severity)] \(.labels | del(.alertname, .severity, .instance, .job) | to_entries | map("\(.key)=\(.value)") | join(" "))\n    \(.annotations.description)"' "$OUT/alert-$1.json"
}

# finish: the namespace must hold nothing but the sidecar; record what is left on disk.
assert_nothing_left() {
  local left
  left=$(ns_ps | awk '$1 != 1')
  echo "$left" >"$OUT/ps-after.txt"
  [[ -z $left ]] || { echo "$left" >&2; die "processes left in the namespace"; }
  local zombies
  zombies=$(ns_ps | awk '$3 == "Z"' | wc -l)
  [[ $zombies -eq 0 ]] || die "$zombies zombies left"
}
# ls_work — the entries of $W except the replay's own files (bin/: scripts, home/: HOME, prom/,
# policies, logs, symlinks).
ls_work() {
  find "$W" -mindepth 1 -maxdepth 1 \
    ! -name out ! -name bin ! -name home ! -name prom ! -name '*.log' ! -name '*.yaml' \
    ! -name '*.yml' ! -name '*.json' ! -type l -printf '%f\n' | sort
}

# show_audit [N] — the sidecar's audit events (kills), one line each.
show_audit() {
  jq -r 'select(.target == "leakwarden::audit" and .outcome != null) | "  audit: \(.rule) \(.action) pid \(.pid) (\(.comm)) → \(.outcome): \(.reason)"' \
    "$W/sidecar.log" 2>/dev/null | head -"${1:-20}" || true
}

verdict() {
  banner "verdict"
  printf '%s\n' "$@"
  echo "PASS"
}
