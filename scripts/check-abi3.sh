#!/usr/bin/env bash
# Builds the abi3 wheel once and runs the Python tests with it under every CPython >= 3.10
# found on PATH (one wheel serves them all). Interpreters that are absent are reported, not
# silently skipped. Arguments: the test dependencies to install next to the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
# Each environment holds torch (several GB): never leave one behind, even on failure.
trap 'rm -rf "$out"' EXIT
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin build --release --quiet --out "$out"
wheel=$(ls "$out"/blindfed-*-abi3-*.whl)
echo "wheel: $(basename "$wheel")"
status=0
# An interpreter for a version: on PATH (if it runs), else in pyenv's version folders.
find_python() {
    if "python$1" -c "import sys" >/dev/null 2>&1; then
        command -v "python$1"
        return
    fi
    if command -v pyenv >/dev/null; then
        ls -d "$(pyenv root)"/versions/"$1".*/bin/"python$1" 2>/dev/null | tail -n 1
    fi
}
for version in 3.10 3.11 3.12 3.13; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "python$version: not installed here, not checked"
        continue
    fi
    env="$out/venv-$version"
    "$python" -m venv "$env"
    "$env/bin/python" -m pip install --quiet --no-cache-dir "numpy>=1.24" "$@" "$wheel"
    # Run from outside the source tree so the installed wheel, not python/, is imported.
    # The summary line and any failures' names reach the log, prefixed by the version; a
    # failure on one version does not hide the others.
    (cd "$out" && "$env/bin/python" -m pytest -q -rfE -p no:cacheprovider "$OLDPWD/tests/python" \
        | grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|error)" | sed "s/^/python$version: /") \
        || status=1
    rm -rf "$env"
done
exit "$status"
