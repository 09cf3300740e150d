#!/usr/bin/env bash
# The test command of the README. On a fresh machine it provisions what the tests need (Apache
# Kafka, PostgreSQL and Redis on loopback, a Python environment), then runs: the format check,
# clippy with warnings denied, every Rust test and the cross-language tests in tests/python.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { printf '\n==> %s  [%ds]\n' "$*" $((SECONDS - t0)); }

if ! command -v sqlite3 >/dev/null; then
  step "installing the sqlite3 CLI (tests query the embedded database with it)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3) >/dev/null
fi

# A CI checkout builds once from nothing: incremental caches would only cost time and disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied), every feature on"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "the default embedded build: clippy, and no librdkafka in its dependency tree"
cargo clippy -p tickflow --all-targets --locked -- -D warnings
if cargo tree -p tickflow -e normal --locked | grep -q rdkafka; then
  echo "tickflow's default build depends on rdkafka:" >&2
  cargo tree -p tickflow -e normal -i rdkafka-sys --locked >&2 || true
  exit 1
fi

step "services: Kafka, PostgreSQL, Redis"
started_here=0
scripts/services.sh status >/dev/null 2>&1 || started_here=1
eval "$(scripts/services.sh up)"
# Tests that need a service fail, rather than skip, when its address is missing.
export TICKFLOW_REQUIRE_SERVICES=1
if [ "$started_here" = 1 ] && [ -z "${TICKFLOW_KEEP_SERVICES:-}" ]; then
  trap 'scripts/services.sh down >/dev/null 2>&1 || true' EXIT
fi

step "cargo build (binaries for the cross-process tests)"
cargo build --workspace --bins --all-features --locked

step "cargo test"
cargo test --workspace --all-features --locked

step "python tests (clients generated from proto/, standard Kafka client)"
venv="$(scripts/pyenv.sh)"
"$venv/bin/python" -m pytest -q tests/python

step "Kubernetes manifests, Prometheus and Grafana files (schema validation)"
scripts/validate-k8s.sh

step "fuzz targets, 10 s each (scripts/fuzz.sh)"
scripts/fuzz.sh 10

step "all tests passed"
