#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding tests/python/requirements.txt, creating it on
# first use. It is cached under ~/.cache/tickflow, keyed by the requirements' content.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/tests/python/requirements.txt"
key="$(sha256sum "$req" | cut -c1-12)"
venv="${TICKFLOW_CACHE:-$HOME/.cache/tickflow}/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "creating Python environment $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
