#!/usr/bin/env bash
# The delta benchmark (docs/BENCHMARKS.md, "Delta updates: bytes on the
# wire"), end to end: the tools it needs, the Debian image pair (cached under
# target/delta-bench), the release binaries, then bench-delta. Arguments go to
# bench-delta (e.g. `--runs 5`, `--delta`). Needs root; takes a few minutes
# the first time (mmdebstrap), then about one minute per install round.
# Never run by ./test or CI.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"

missing=()
for tool in mmdebstrap:mmdebstrap mke2fs:e2fsprogs casync:casync zstd:zstd; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${missing[*]}" >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >&2
  else
    echo "missing: ${missing[*]} (apt-get install -y --no-install-recommends ${missing[*]})" >&2
    exit 1
  fi
fi

mapfile -t images < <("$here/build-images.sh" "$workspace/target/delta-bench")
[ "${#images[@]}" -eq 2 ] || { echo "build-images.sh did not print two images" >&2; exit 1; }

cd "$workspace"
cargo build --release --locked -p ota-agent --bin ota-agent -p ota-server --bin ota-server \
  -p ota-repo --bin ota-repo -p integration-tests --bin bench-delta >&2
echo "==> packages N -> N+1:" >&2
grep '^>' "$(dirname "${images[1]}")/packages-diff.txt" | sed 's/^> /    /' >&2 || true
exec target/release/bench-delta --n "${images[0]}" --n1 "${images[1]}" "$@"
