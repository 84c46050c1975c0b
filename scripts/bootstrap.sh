#!/usr/bin/env bash
# Shared set-up for scripts/serve and scripts/test: a virtual environment in
# .venv with enclaved and everything it needs. Idempotent and quiet when
# nothing changed; the first run builds llama-cpp-python from source (a few
# minutes on two cores - pip prints its progress).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ENCLAVED_VENV:-$root/.venv}"
extra="${1:-}"

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "enclaved needs Python 3.11 or newer (found: $("$python" --version 2>&1))" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

# Re-install only when pyproject.toml changed since the last successful install.
stamp="$venv/.enclaved-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    if "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
        echo "==> updating enclaved${extra:+[$extra]} in $venv (pyproject.toml changed)" >&2
    else
        echo "==> installing enclaved${extra:+[$extra]} and its dependencies (builds llama-cpp-python from source: ~5 minutes on two cores)" >&2
    fi
    "$venv/bin/python" -m pip install --progress-bar off -e "$root${extra:+[$extra]}" 2>&1 \
        | grep -v -e '^Requirement already satisfied' -e "Location 'file://" >&2 || true
    "$venv/bin/python" -c 'import enclaved, llama_cpp, coincurve' \
        || { echo "installation failed: see the pip output above" >&2; exit 1; }
    touch "$stamp"
fi
