# leakwarden — see README.md.
SHELL := /bin/bash
CARGO ?= cargo
NEXTEST_PROFILE ?= $(if $(CI),ci,default)

.PHONY: all deps build release test lint fmt run e2e bench bench-runner bench-service soak incident mixin clean

all: build

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --workspace --release --bins

# Every test: unit tests, end-to-end tests with real processes, Chromium, promtool, Prometheus.
# The end-to-end tests run the debug binaries built by `build`.
test: deps build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE); \
	else \
	  $(CARGO) test --workspace; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The main job: the runner's embedded default job with the sidecar beside it, and a short report.
run: deps build
	./scripts/run-demo.sh

e2e: deps build
	$(CARGO) nextest run -p leakwarden-tests --test e2e_stack --profile $(NEXTEST_PROFILE)

bench: deps release
	./tests/bench/sidecar-vs-peers.sh

bench-runner: deps release
	./tests/bench/runner-vs-peers.sh

# leakwarden-runner serve vs browserless vs clients launching Chromium (hours; a quiet machine).
bench-service: deps release
	./tests/bench/runner-service-vs-peers.sh

soak: deps release
	./tests/bench/soak.sh

incident: deps build
	./tests/incidents/replay.sh $(NAME)

# Render alerts/, dashboards/ and the generated manifests from mixin/config.yaml (README "Alerts").
mixin: deps
	target/tools/venv/bin/python mixin/generate.py

clean:
	$(CARGO) clean
