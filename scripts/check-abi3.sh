#!/usr/bin/env bash
# Builds the abi3 wheel once and runs the Python tests with it under every CPython >= 3.10
# found on PATH (one wheel serves them all). Interpreters that are absent are reported, not
# silently skipped. Each environment gets the wheel, numpy, pytest and scikit-learn (digits for
# the block tests) only: the point is the compiled extension under each interpreter; the torch
# side (several GB per environment, pure Python above the extension) is tested by `make test`,
# and the test files that need torch report themselves skipped in the summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
# Never leave an environment behind, even on failure.
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
    "$env/bin/python" -m pip install --quiet --no-cache-dir \
        "numpy>=1.24" "pytest>=8" "scikit-learn>=1.3" "$wheel"
    # Run from outside the source tree so the installed wheel, not python/, is imported.
    # The summary line and any failures' names reach the log, prefixed by the version; a
    # failure on one version does not hide the others.
    (cd "$out" && "$env/bin/python" -m pytest -q -rfE -p no:cacheprovider "$OLDPWD/tests/python" \
        | grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed|error)" | sed "s/^/python$version (wheel, no torch): /") \
        || status=1
    rm -rf "$env"
done
exit "$status"
