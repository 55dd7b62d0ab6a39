#!/usr/bin/env bash
# Installs what the tests and demos need, only when missing: Debian packages (Chromium and its
# driver, Prometheus + promtool, Alertmanager, the peer exporters, tini and dumb-init) and, from PyPI,
# kubernetes-validate into a venv under target/ (offline manifest validation).
# Safe to run repeatedly; a no-op on a machine that has everything.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
check() { # check BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
check chromium chromium
check chromedriver chromium-driver
check promtool prometheus
check prometheus prometheus
check prometheus-alertmanager prometheus-alertmanager
check prometheus-process-exporter prometheus-process-exporter
check prometheus-node-exporter prometheus-node-exporter
# Real container inits: the ownership tests run browsers as their payloads.
check tini tini
check dumb-init dumb-init
check unshare util-linux
check nsenter util-linux
check python3 python3
check curl curl
check ps procps
check pgrep procps
# `python3 -m venv` needs ensurepip (Debian ships it separately).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)

if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

VENV=target/tools/venv
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  echo "install-deps: installing kubernetes-validate into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate
fi
