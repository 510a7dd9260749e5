#!/usr/bin/env bash
# Prints the import graph between the top-level modules of tuf-repo/src and
# fails (exit 1) on an upward import or an import cycle.
#
# Layers, bottom first; a module may import its own layer (without a cycle)
# or any layer below, never one above:
#   0 files and layout of the repository
#   1 editing and signing plans
#   2 the operations
#   3 the command line (src/main.rs and src/cli/, the binary)
# A new top-level module must be added to one of the lists below.
#
# An import is a `crate::NAME` path in a library module, or an
# `ota_repo::NAME` path in the binary. Grouped paths (`use crate::{a, b}`)
# are refused, so that every import is seen. Comments are not code: a path
# named in one (`// see crate::x`) is no import. `audit`, `keys`, `key_ref`
# and `pkcs11` are re-exports of the ota-signing crate (below every layer).
set -euo pipefail
shopt -s nullglob

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/src"

declare -A layer=()
for m in layout state config role expiry target_name error progress delegated; do layer[$m]=0; done
for m in editor; do layer[$m]=1; done
for m in init add delegation resign rotate ceremony rollout evidence publish status; do layer[$m]=2; done
layer[cli]=3
external=" audit keys key_ref pkcs11 "

# The files of a top-level module.
files_of() {
    if [ "$1" = cli ]; then
        echo "$src/main.rs"
        [ -d "$src/cli" ] && find "$src/cli" -name '*.rs' | sort
    else
        [ -f "$src/$1.rs" ] && echo "$src/$1.rs"
        [ -d "$src/$1" ] && find "$src/$1" -name '*.rs' | sort
    fi
    return 0
}

# The code of the given files, each line as FILE:LINE: TEXT, without `//`
# comments (a `//` right after a non-blank, as in `https://`, is kept).
code_of() {
    awk '{
        sub(/^[ \t]*\/\/.*$/, "")
        sub(/[ \t]\/\/.*$/, "")
        print FILENAME ":" FNR ": " $0
    }' "$@"
}

fail=0
modules=()
for f in "$src"/*.rs "$src"/*/; do
    m="$(basename "${f%/}" .rs)"
    case "$m" in lib | main | cli) continue ;; esac
    [[ " ${modules[*]:-} " == *" $m "* ]] || modules+=("$m")
done
modules+=(cli)

edges=""
for m in "${modules[@]}"; do
    if [ -z "${layer[$m]:-}" ]; then
        echo "error: module $m is in no layer (add it to check-layers.sh)"
        fail=1
        continue
    fi
    prefix=crate
    [ "$m" = cli ] && prefix=ota_repo
    mapfile -t fs < <(files_of "$m")
    code="$(code_of "${fs[@]}")"
    if grep -E "\b$prefix::\{" <<<"$code"; then
        echo "error: grouped $prefix::{...} import in $m: write one path per use"
        fail=1
    fi
    deps="$(grep -oE "\b$prefix::[a-z_][a-z0-9_]*" <<<"$code" | sed "s/^$prefix:://" | sort -u || true)"
    shown=()
    for d in $deps; do
        [ "$d" = "$m" ] && continue
        [[ "$external" == *" $d "* ]] && continue
        if [ -z "${layer[$d]:-}" ]; then
            # Not a top-level module (an item re-exported at the crate root).
            [ "$m" = cli ] && continue
            echo "error: $m imports crate::$d, which is no module in a layer"
            fail=1
            continue
        fi
        shown+=("$d")
        edges+="$m $d"$'\n'
        if [ "${layer[$d]}" -gt "${layer[$m]}" ]; then
            echo "error: upward import: $m (layer ${layer[$m]}) -> $d (layer ${layer[$d]})"
            fail=1
        fi
    done
    printf '%-12s [%s] -> %s\n' "$m" "${layer[$m]}" "${shown[*]:-}"
done

if ! printf '%s' "$edges" | tsort >/dev/null 2>/tmp/check-layers.$$; then
    echo "error: import cycle:"
    sed 's/^tsort: /  /' /tmp/check-layers.$$
    fail=1
fi
rm -f /tmp/check-layers.$$

if [ "$fail" -ne 0 ]; then
    echo "check-layers: FAILED"
    exit 1
fi
echo "check-layers: ok (${#modules[@]} modules, no upward import, no cycle)"
