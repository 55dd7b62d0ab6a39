#!/usr/bin/env bash
# replay.sh NAME — replay one incident (tests/incidents/NAME/replay.sh) and print what a person
# sees: the sidecar's scan at the key moment, metric lines, the alert, cleanup output, a verdict.
# `make incident NAME=…` calls this. Needs root (private PID namespaces).
#
# Environment: LW_BIN_DIR (default target/debug), LW_INCIDENT_OUT (keep artifacts there: what the
# Rust tests in tests/tests/incident_replays.rs assert on), LW_KEEP=1 (keep the work directory).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
names=$(cd "$here" && for d in */; do if [[ -x $d/replay.sh ]]; then echo "${d%/}"; fi; done)
name=${1:-}
if [[ -z $name || ! -x $here/$name/replay.sh ]]; then
  echo "usage: $0 NAME   (make incident NAME=…)" >&2
  echo "incidents:" $names >&2
  exit 64
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "replay.sh: needs root (unshare --pid)" >&2
  exit 77
fi
exec env INCIDENT="$name" "$here/$name/replay.sh"
