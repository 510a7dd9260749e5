#!/usr/bin/env bash
# Reference board 1 of the full-system tests (docs/FULL-SYSTEM.md): x86_64,
# UEFI (OVMF) + GRUB, a GPT disk with ESP, root A, root B and a data
# partition, Debian 12 root filesystems built with mmdebstrap. Needs root
# (mmdebstrap into a directory, chroot for the initramfs).
#
#   build-x86-grub.sh rootfs CACHE_DIR
#       The Debian tree every slot image starts from, cached under
#       CACHE_DIR/rootfs-<hash of this script> (a second run reuses it).
#       Prints the tree's path.
#   build-x86-grub.sh slot ROOTFS AGENT_BIN OVERLAY OUT.img
#       A slot image: the cached tree, plus the agent binary, the units from
#       systemd/ installed and enabled as a package would, the board's
#       settings, and OVERLAY (the release's /etc/ota: agent.toml,
#       root.json, ...) copied over it. ext4 without a journal, sized to fit.
#   build-x86-grub.sh disk SLOT_A.img SLOT_MIB OUT.disk
#       The factory disk: GPT, ESP with GRUB (the shipped boot/grub/grub.cfg)
#       and its environment block, slot A written, slot B empty, an empty
#       ext4 data partition for the agent's state.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
mirror="${OTA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# The packages of every slot: systemd as init, the kernel, networkd for DHCP
# on QEMU's user network. Nothing else: the agent is one static-enough binary
# linked against Debian 12's glibc.
packages=systemd,systemd-sysv,linux-image-amd64,iproute2

# Board 2 (build-x86-sdboot.sh) runs this script's rootfs and slot commands
# with OTA_BOARD_BOOTLOADER=systemd-boot; its slots differ in two settings
# (see board_settings). It needs Debian's systemd-boot package, which ships
# systemd-bless-boot and its generator (Debian 12's systemd does not). Both
# boards share one tree, so a test run builds one: on board 1 the generator
# finds no LoaderBootCountPath (GRUB sets none) and does nothing.
bootloader="${OTA_BOARD_BOOTLOADER:-grub}"
packages+=,systemd-boot

# The kernel modules the board loads, by name (AHCI disk, ext4 and crc32c,
# the ESP's FAT and its code pages, efivarfs, virtio network, the i6300esb
# watchdog, autofs4 for systemd), and what they depend on; the other ~500
# go. A device maker ships a tailored kernel; this keeps the slot image
# (which every update downloads, writes, reads back and hashes, slowly
# under emulation) small, and udev has less to load at boot.
board_modules='ahci sd_mod ext4 crc32c_intel crc32c_generic vfat nls_cp437 nls_ascii nls_utf8 efivarfs virtio_net virtio_pci i6300esb autofs4'

# Files an installed read-only slot never uses: perl (initramfs-tools and
# debconf needed it at build time), iconv's charsets, udev's hardware
# database, the packages' documentation.
drop_files=(
  usr/lib/x86_64-linux-gnu/perl usr/share/perl usr/lib/x86_64-linux-gnu/gconv
  usr/lib/udev/hwdb.bin var/cache/debconf var/lib/apt/lists
  usr/bin/perl usr/bin/perl5.36.0 usr/lib/x86_64-linux-gnu/perl-base
  usr/lib/x86_64-linux-gnu/libperl.so.5.36 usr/lib/x86_64-linux-gnu/libperl.so.5.36.0
  usr/share/perl5 usr/share/doc
)

say() { printf '==> %s\n' "$*" >&2; }

cmd_rootfs() {
  local cache="$1"
  local hash
  # Keyed by the recipe alone, so editing the board's settings below does
  # not rebuild the tree.
  hash="$({
    echo "$packages" "$board_modules" "${drop_files[*]}"
    declare -f cmd_rootfs
  } | sha256sum | cut -c1-16)"
  local tree="$cache/rootfs-$hash"
  if [ -e "$tree/.complete" ]; then
    echo "$tree"
    return
  fi
  mkdir -p "$cache"
  rm -rf "$tree" "$tree.tmp"
  say "building the Debian 12 root filesystem (mmdebstrap) into $tree"
  # The initramfs only needs the AHCI disk and ext4: a list keeps it small
  # (MODULES=dep cannot look at the target's hardware from a chroot).
  mmdebstrap --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"; echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ota-board"; printf "ahci\nsd_mod\next4\n" > "$1/etc/initramfs-tools/modules"' \
    bookworm "$tree.tmp" "$mirror" >&2
  local kdir kver keep
  for kdir in "$tree.tmp"/usr/lib/modules/*; do
    kver="$(basename "$kdir")"
    # Paths under kernel/ of the board's modules and their dependencies.
    # shellcheck disable=SC2086 # one argument per module name
    keep="$(chroot "$tree.tmp" modprobe -S "$kver" --show-depends -a $board_modules |
      awk '$1 == "insmod" { sub(".*/kernel/", "", $2); print $2 }' | sort -u)"
    [ -n "$keep" ] || { echo "no kernel modules of the board found in $kdir" >&2; exit 1; }
    (cd "$kdir/kernel" && find . -name '*.ko*' | sed 's|^\./||' | grep -vxF "$keep" | xargs -r rm -f)
    find "$kdir/kernel" -type d -empty -delete
    chroot "$tree.tmp" depmod "$kver"
  done
  local f
  for f in "${drop_files[@]}"; do rm -rf "${tree:?}.tmp/$f"; done
  touch "$tree.tmp/.complete"
  mv "$tree.tmp" "$tree"
  echo "$tree"
}

# The board's settings on top of Debian: what a device maker's image recipe
# would add. Written into a staging copy of the tree, never the cache.
board_settings() {
  local root="$1"
  # The shipped grub.cfg boots /boot/vmlinuz and /boot/initrd.img of the slot.
  local vmlinuz initrd
  vmlinuz="$(cd "$root/boot" && ls vmlinuz-* | head -n1)"
  initrd="$(cd "$root/boot" && ls initrd.img-* | head -n1)"
  ln -sf "$vmlinuz" "$root/boot/vmlinuz"
  ln -sf "$initrd" "$root/boot/initrd.img"

  # The root filesystem stays read-only (the kernel mounts it `ro` and it is
  # not in fstab), so the slot keeps exactly the signed bytes. The ESP holds
  # GRUB's environment block; the data partition the agent's state.
  mkdir -p "$root/boot/efi" "$root/var/lib/ota-agent"
  cat >"$root/etc/fstab" <<'EOF'
/dev/sda1 /boot/efi vfat umask=0077 0 0
/dev/sda4 /var/lib/ota-agent ext4 defaults 0 0
EOF
  echo "ota-x86-$bootloader" >"$root/etc/hostname"
  # A read-only /etc: systemd makes a transient machine id in /run.
  : >"$root/etc/machine-id"

  # DHCP on QEMU's user network (the server is the host, 10.0.2.2).
  mkdir -p "$root/etc/systemd/network"
  cat >"$root/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
  chroot "$root" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1

  # GRUB has no boot counting of its own to pull boot-complete.target in: the
  # board wants it, so ota-health-check.service (RequiredBy=boot-complete.target)
  # runs each boot. Under systemd-boot, systemd-bless-boot-generator pulls it in
  # (through systemd-bless-boot.service) on every boot of a counting entry,
  # which is every trial boot: that is the board under test, so no link.
  if [ "$bootloader" = grub ]; then
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sf /usr/lib/systemd/system/boot-complete.target \
      "$root/etc/systemd/system/multi-user.target.wants/boot-complete.target"
  fi

  # The test's control channel: a root shell on the second serial port (the
  # first is the console the test logs). A board would not ship this.
  cat >"$root/etc/systemd/system/ota-test-shell.service" <<'EOF'
[Unit]
Description=Root shell on ttyS1 for the full-system tests
After=systemd-user-sessions.service

[Service]
ExecStart=/bin/sh
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS1
TTYReset=yes
Restart=always
RestartSec=1
# An interactive sh ignores SIGTERM: without this every shutdown would wait
# DefaultTimeoutStopSec (90 s) for it, in every reboot of every test.
KillSignal=SIGKILL

[Install]
WantedBy=multi-user.target
EOF
  chroot "$root" systemctl enable ota-test-shell.service >/dev/null 2>&1
  # For the tests only: systemd declares the agent hung after 30 s without a
  # WATCHDOG=1 (it sends one every 15 s, also while streaming an image) and
  # restarts it 2 s later, where the shipped unit waits 120 s and 30 s; the
  # hung-agent test then waits ~35 s instead of ~150 s. What it proves (a
  # stopped agent is killed, restarted and resumes) does not depend on the
  # numbers, and the hardware watchdog (agent.toml, 240 s) still outlasts them.
  mkdir -p "$root/etc/systemd/system/ota-agent.service.d"
  printf '[Service]\nWatchdogSec=30\nRestartSec=2\n' \
    >"$root/etc/systemd/system/ota-agent.service.d/ota-test-watchdog.conf"
  # The journal on the console too, so the serial log shows the agent.
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\nStorage=volatile\n' \
    >"$root/etc/systemd/journald.conf.d/ota-console.conf"
}

cmd_slot() {
  local rootfs="$1" agent="$2" overlay="$3" out="$4"
  local stage
  stage="$(mktemp -d "${out}.stage.XXXXXX")"
  trap 'rm -rf "$stage"' RETURN
  # Hard links: fast, and every file this function changes is replaced (rm
  # first), never written through the link into the cache.
  cp -al "$rootfs/." "$stage/"
  rm -f "$stage/.complete"
  board_settings "$stage"
  # Without debug info and symbols: a debug build is mostly DWARF, and the
  # slot image is what every update downloads.
  mkdir -p "$stage/usr/bin"
  strip --strip-all -o "$stage/usr/bin/ota-agent" "$agent"
  chmod 0755 "$stage/usr/bin/ota-agent"
  # The units, installed and enabled the way a Debian package would.
  local unit
  for unit in ota-agent.service ota-health-check.service; do
    install -D -m 0644 "$workspace/systemd/$unit" "$stage/usr/lib/systemd/system/$unit"
  done
  chroot "$stage" systemctl enable ota-health-check.service ota-agent.service >/dev/null 2>&1
  # The release's own files. Each destination is removed first: it may be a
  # hard link into the cache, or a symlink (usr/sbin/init) cp would follow.
  local rel
  while IFS= read -r -d '' rel; do
    rm -f "$stage/$rel"
    mkdir -p "$(dirname "$stage/$rel")"
    cp -a "$overlay/$rel" "$stage/$rel"
  done < <(cd "$overlay" && find . \( -type f -o -type l \) -printf '%P\0')
  # The image is what devices download, write, read back and hash: sized to
  # the content in 4 KiB blocks (counted here, not by du: the host's file
  # system may allocate differently), one inode per file plus a few, no
  # reserved blocks (the slot is read-only), and room for ext4's own
  # structures: 1/32 and 4 MiB (a few MiB are left free).
  local kib files
  kib="$(find "$stage" -printf '%y %s\n' |
    awk '$1 == "f" || $1 == "d" { k += int(($2 + 4095) / 4096) * 4 } $1 == "l" && $2 > 59 { k += 4 } END { print k }')"
  files="$(find "$stage" | wc -l)"
  kib=$((kib + kib / 32 + files / 4 + 4096))
  rm -f "$out"
  mke2fs -q -F -t ext4 -b 4096 -m 0 -N $((files + 1024)) -O ^has_journal -L rootfs \
    -d "$stage" "$out" "${kib}k" >/dev/null
}

cmd_disk() {
  local slot_a="$1" slot_mib="$2" out="$3"
  local esp_mib=40 data_mib=64
  local a_bytes
  a_bytes="$(stat -c %s "$slot_a")"
  if [ "$a_bytes" -gt $((slot_mib * 1024 * 1024)) ]; then
    echo "slot image $slot_a ($a_bytes bytes) does not fit a ${slot_mib} MiB slot" >&2
    exit 1
  fi
  local tmp
  tmp="$(mktemp -d "${out}.parts.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN

  # ESP: GRUB with its prefix on the ESP itself, so grub.cfg's load_env and
  # save_env use ESP/grub/grubenv, the block the agent writes.
  mkfs.vfat -C -n ESP "$tmp/esp.img" $((esp_mib * 1024)) >/dev/null
  grub-mkimage -O x86_64-efi -p '(hd0,gpt1)/grub' -o "$tmp/BOOTX64.EFI" \
    part_gpt fat ext2 normal linux echo test loadenv configfile search \
    boot reboot halt efi_gop all_video gzio sleep true
  # The shipped selection logic verbatim; the board's part is the kernel
  # command line: the serial console, and a reset 5 s after a panic.
  sed -e 's/\(ota\.slot=[AB]\)$/\1 console=ttyS0,115200 panic=5/' \
    "$workspace/boot/grub/grub.cfg" >"$tmp/grub.cfg"
  grub-editenv "$tmp/grubenv" create
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT ::/grub
  mcopy -i "$tmp/esp.img" "$tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$tmp/esp.img" "$tmp/grub.cfg" ::/grub/grub.cfg
  mcopy -i "$tmp/esp.img" "$tmp/grubenv" ::/grub/grubenv

  mke2fs -q -F -t ext4 -L ota-data "$tmp/data.img" "${data_mib}M" >/dev/null

  rm -f "$out"
  local total=$((1 + esp_mib + 2 * slot_mib + data_mib + 1))
  truncate -s "${total}M" "$out"
  sfdisk -q "$out" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=uefi, name=esp
size=${slot_mib}MiB, type=linux, name=root-a
size=${slot_mib}MiB, type=linux, name=root-b
size=${data_mib}MiB, type=linux, name=ota-data
EOF
  dd if="$tmp/esp.img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$slot_a" of="$out" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
  dd if="$tmp/data.img" of="$out" bs=1M seek=$((1 + esp_mib + 2 * slot_mib)) conv=notrunc,sparse status=none
}

case "${1:-}" in
  rootfs) shift; cmd_rootfs "$@" ;;
  slot) shift; cmd_slot "$@" ;;
  disk) shift; cmd_disk "$@" ;;
  *)
    echo "usage: $0 rootfs CACHE_DIR | slot ROOTFS AGENT OVERLAY OUT.img | disk SLOT_A.img SLOT_MIB OUT.disk" >&2
    exit 2
    ;;
esac
