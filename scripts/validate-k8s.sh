#!/usr/bin/env bash
# Validates the deployment artefacts offline: the Kubernetes manifests in k8s/ (rendered with
# kustomize or `kubectl kustomize` when installed, checked against the Kubernetes schemas bundled
# in kubernetes-validate and k8s/schemas/ for the KEDA and Strimzi resources, and cross-checked),
# deploy/prometheus/prometheus.yml and deploy/grafana/tickflow-dashboard.json.
# Needs no cluster and no network once the Python environment exists (scripts/pyenv.sh).
# Exits non-zero, naming the file and object, if anything is invalid.
#
# Usage: scripts/validate-k8s.sh [--k8s-versions 1.30,1.37]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(scripts/pyenv.sh)"
exec "$venv/bin/python" scripts/validate_k8s.py "$@"
