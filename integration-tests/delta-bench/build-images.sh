#!/usr/bin/env bash
# The image pair of the delta benchmark (docs/BENCHMARKS.md, "Delta updates:
# bytes on the wire"): two ext4 root filesystems built from Debian 12
# packages, N from the point release alone, N+1 the same package list with
# bookworm-updates and bookworm-security applied (the update a device maker
# ships most often). Needs root (mmdebstrap into a directory).
#
#   build-images.sh CACHE_DIR
#       Builds (or reuses) CACHE_DIR/<recipe hash>/{n,n1}.img and prints the
#       two paths, N first. packages-diff.txt beside them lists what changed.
#
# Determinism, so that unchanged files land in the same blocks of both images
# as far as ext4 allows: SOURCE_DATE_EPOCH for mmdebstrap (and every mtime
# newer than it clamped to it), and for mke2fs: fixed size, block size, inode
# count and size, UUID, directory hash seed, root owner, no journal (the
# root filesystem is mounted read-only) and E2FSPROGS_FAKE_TIME for the
# superblock times. mke2fs -d copies the tree in readdir order and allocates
# blocks in that order, so a file that grows still moves the files copied
# after it: that shift is what content-defined chunking is for.
set -euo pipefail

mirror="${OTA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${OTA_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# A small headless device: systemd, networking, TLS, ssh and Python, the
# packages security updates touch most (libc, openssl, systemd, curl,
# openssh, python).
packages=systemd,systemd-sysv,udev,iproute2,openssl,ca-certificates,curl,openssh-server,python3
image_mib=448
inodes=32768
uuid=6f7a1c3e-0b5d-4e8a-9c2f-3d1e5a7b9c01
hash_seed=2b8e4f60-7d13-4c9a-a5e1-0c6f9b2d4e73
epoch=1704067200 # 2024-01-01T00:00:00Z

say() { printf '==> %s\n' "$*" >&2; }

need() {
  local missing=()
  local tool
  for tool in mmdebstrap mke2fs; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]} (apt-get install -y --no-install-recommends mmdebstrap e2fsprogs)" >&2
    exit 1
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "build-images.sh needs root (mmdebstrap into a directory)" >&2
    exit 1
  fi
}

# One root tree: the package list from the given apt sources, docs and man
# pages left out as an image recipe would.
build_tree() {
  local out="$1"
  shift
  SOURCE_DATE_EPOCH="$epoch" mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$out" "$@" >&2
  rm -rf "${out:?}/var/lib/apt/lists" "${out:?}/var/cache/apt" "${out:?}/var/cache/debconf"/*-old
  : >"$out/etc/machine-id"
  # Maintainer scripts write files at build time; clamp them like dpkg's own.
  find "$out" -newermt "@$epoch" -print0 | xargs -0r touch -h -d "@$epoch"
}

make_image() {
  local tree="$1" out="$2"
  rm -f "$out"
  E2FSPROGS_FAKE_TIME="$epoch" SOURCE_DATE_EPOCH="$epoch" mke2fs -q -F -t ext4 \
    -O ^has_journal -b 4096 -I 256 -N "$inodes" -m 0 -L rootfs \
    -U "$uuid" -E "hash_seed=$hash_seed,root_owner=0:0,lazy_itable_init=0" \
    -d "$tree" "$out" "${image_mib}M" >/dev/null
}

main() {
  [ $# -eq 1 ] || { echo "usage: build-images.sh CACHE_DIR" >&2; exit 2; }
  need
  local cache="$1" hash dir
  hash="$({
    echo "$packages $image_mib $inodes $uuid $hash_seed $epoch"
    declare -f build_tree make_image
  } | sha256sum | cut -c1-16)"
  dir="$cache/delta-bench-$hash"
  if [ -e "$dir/.complete" ]; then
    echo "$dir/n.img"
    echo "$dir/n1.img"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  say "N: bookworm point release ($packages)"
  build_tree "$dir/tree-n" "deb $mirror bookworm main"
  say "N+1: the same with bookworm-updates and bookworm-security"
  build_tree "$dir/tree-n1" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security_mirror bookworm-security main"
  local t
  for t in n n1; do
    chroot "$dir/tree-$t" dpkg-query -W -f '${Package} ${Version}\n' | sort >"$dir/packages-$t.txt"
  done
  diff "$dir/packages-n.txt" "$dir/packages-n1.txt" >"$dir/packages-diff.txt" || true
  say "packages that differ: $(grep -c '^>' "$dir/packages-diff.txt" || true)"
  make_image "$dir/tree-n" "$dir/n.img"
  make_image "$dir/tree-n1" "$dir/n1.img"
  rm -rf "$dir/tree-n" "$dir/tree-n1"
  touch "$dir/.complete"
  echo "$dir/n.img"
  echo "$dir/n1.img"
}

main "$@"
