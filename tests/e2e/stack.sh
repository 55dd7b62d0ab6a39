#!/bin/bash
# Driver of tests/tests/e2e_stack.rs: runs as PID 1 of a private PID namespace
# (`unshare --pid --fork --mount-proc --kill-child`), so everything it starts — and every browser
# the runner abandons — lives and dies in that namespace, and the sidecar can reach nothing else.
#
# Starts Prometheus, Alertmanager and the sidecar at once; starts the runner (with the `abandon`
# fault) when the test creates $DIR/go, i.e. once the test has seen Prometheus scrape the sidecar.
# As PID 1 it also reaps what the sidecar kills (bash reaps any child on SIGCHLD).
#
# Environment (all required): DIR (work dir with prometheus.yml, alertmanager.yml, policy.yaml),
# LEAKWARDEN, RUNNER (binaries), PROM_ADDR, AM_ADDR, SIDECAR_ADDR, RUNNER_ADDR, RUNNER_ARGS.
set -euo pipefail
: "${DIR:?}" "${LEAKWARDEN:?}" "${RUNNER:?}" "${PROM_ADDR:?}" "${AM_ADDR:?}" "${SIDECAR_ADDR:?}"
: "${RUNNER_ADDR:?}" "${RUNNER_ARGS:?}"
mkdir -p "$DIR/tmp"
export TMPDIR=$DIR/tmp

prometheus \
  --config.file="$DIR/prometheus.yml" \
  --storage.tsdb.path="$DIR/prometheus-data" \
  --web.listen-address="$PROM_ADDR" \
  --log.level=warn >"$DIR/prometheus.log" 2>&1 &

# --cluster.listen-address= : no gossip, a single Alertmanager.
prometheus-alertmanager \
  --config.file="$DIR/alertmanager.yml" \
  --storage.path="$DIR/alertmanager-data" \
  --web.listen-address="$AM_ADDR" \
  --cluster.listen-address= \
  --log.level=warn >"$DIR/alertmanager.log" 2>&1 &

"$LEAKWARDEN" watch --policy "$DIR/policy.yaml" --listen "$SIDECAR_ADDR" --interval 1s \
  >"$DIR/sidecar.log" 2>&1 &

while [[ ! -e $DIR/go ]]; do sleep 0.2; done
# shellcheck disable=SC2086 # RUNNER_ARGS is a list of words
"$RUNNER" run --listen "$RUNNER_ADDR" $RUNNER_ARGS >"$DIR/runner.log" 2>&1 &
echo "runner started" >"$DIR/runner.started"

# Stay PID 1 (and keep reaping) until the test ends the namespace.
while true; do wait || true; sleep 1; done
