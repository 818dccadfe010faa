#!/usr/bin/env bash
# Build the py-runner component: CPython and app.py in one WebAssembly
# component, by componentize-py (installed into target/componentize-venv
# on first use). Skips the build when the component is newer than its
# sources. Prints the component's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/target/componentize-venv"
out="$here/target/py-runner.wasm"

if [[ ! -x "$venv/bin/componentize-py" ]]; then
    echo "[py-runner] installing componentize-py 0.25.1 into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet componentize-py==0.25.1
fi
newest_source=$(find "$here/app.py" "$root/wit" -newer "$out" 2>/dev/null | head -1 || true)
if [[ -f "$out" && -z "$newest_source" ]]; then
    echo "$out"
    exit 0
fi
echo "[py-runner] building $out (CPython + app.py, ~20 s)" >&2
mkdir -p "$here/target"
(cd "$here" && "$venv/bin/componentize-py" -d "$root/wit" -w agent componentize app -o "$out.tmp" >&2)
mv "$out.tmp" "$out"
echo "$out"
