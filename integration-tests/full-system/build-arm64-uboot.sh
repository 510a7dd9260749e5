#!/usr/bin/env bash
# Reference board 3 of the full-system tests (docs/FULL-SYSTEM.md): aarch64
# QEMU `virt` with Debian's U-Boot (u-boot-qemu, qemu_arm64), the shipped
# boot/uboot/boot.cmd, and a redundant U-Boot environment on a partition of
# its own that the agent reads and writes through /etc/fw_env.config. Debian
# 12 arm64 root filesystems built with mmdebstrap (qemu-user-static runs
# the arm64 maintainer scripts). Needs root.
#
#   build-arm64-uboot.sh rootfs CACHE_DIR
#       The Debian arm64 tree every slot image starts from, cached under
#       CACHE_DIR/rootfs-arm64-<hash of the recipe>. Prints the tree's path.
#   build-arm64-uboot.sh slot ROOTFS AGENT_BIN OVERLAY OUT.img
#       A slot image: the tree, the aarch64 agent, the units from systemd/
#       enabled as a package would, the board's settings and OVERLAY (the
#       release's /etc/ota) over it. ext4 without a journal, sized to fit.
#   build-arm64-uboot.sh disk SLOT_A.img SLOT_MIB OUT.disk
#       The factory disk: GPT with a boot partition (boot.scr: the board's
#       prelude and the shipped boot.cmd), slot A written, slot B empty, the
#       agent's data partition and the U-Boot environment partition (copy 0
#       holding BOOT_ORDER="A B" and 3 tries each, copy 1 blank).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
mirror="${OTA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

packages=systemd,systemd-sysv,linux-image-arm64,iproute2

# The modules of this board: virtio over PCI (disk, network), the i6300esb
# watchdog, ext4 and the network stack. The rest go: the slot image is what
# every update downloads.
keep_modules='^(arch|crypto|lib|block|mm|virt)/|^fs/(ext4|jbd2|mbcache|autofs)/|^drivers/(block|virtio|watchdog|char|pci|base|firmware|rtc)/|^drivers/net/(virtio_net|net_failover)|^net/(core|ipv4|ipv6|packet|unix)/'

drop_files=(
  usr/lib/aarch64-linux-gnu/perl usr/share/perl usr/lib/aarch64-linux-gnu/gconv
  usr/lib/udev/hwdb.bin var/cache/debconf var/lib/apt/lists
)

say() { printf '==> %s\n' "$*" >&2; }

# mmdebstrap runs the arm64 maintainer scripts in a chroot through binfmt_misc:
# the handler must be the static qemu (flag F: opened at registration), since
# a dynamically linked one finds no x86 libraries inside the chroot ("chroot:
# failed to run command 'dpkg': No such file or directory").
check_binfmt() {
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  if ! grep -qx enabled "$entry" 2>/dev/null; then
    echo "no binfmt handler for aarch64: apt-get install qemu-user-static binfmt-support" >&2
    exit 1
  fi
  local interp
  interp="$(awk '$1 == "interpreter" {print $2}' "$entry")"
  if ! file -L "$interp" 2>/dev/null | grep -q 'static'; then
    echo "the aarch64 binfmt handler $interp is not statically linked; re-register qemu-user-static's:" >&2
    echo "  update-binfmts --disable qemu-aarch64 && update-binfmts --enable qemu-aarch64" >&2
    exit 1
  fi
}

cmd_rootfs() {
  local cache="$1"
  local hash
  hash="$({
    echo "$packages" "$keep_modules" "${drop_files[*]}"
    declare -f cmd_rootfs
  } | sha256sum | cut -c1-16)"
  local tree="$cache/rootfs-arm64-$hash"
  if [ -e "$tree/.complete" ]; then
    echo "$tree"
    return
  fi
  check_binfmt
  mkdir -p "$cache"
  rm -rf "$tree" "$tree.tmp"
  say "building the Debian 12 arm64 root filesystem (mmdebstrap, qemu-user) into $tree"
  # The initramfs needs the virtio disk and ext4 only.
  mmdebstrap --arch=arm64 --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"; echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ota-board"; printf "virtio_pci\nvirtio_blk\next4\n" > "$1/etc/initramfs-tools/modules"' \
    bookworm "$tree.tmp" "$mirror" >&2
  local kdir
  for kdir in "$tree.tmp"/usr/lib/modules/*; do
    (cd "$kdir/kernel" && find . -name '*.ko*' | sed 's|^\./||' | grep -Ev "$keep_modules" | xargs -r rm -f)
    find "$kdir/kernel" -type d -empty -delete
    chroot "$tree.tmp" depmod "$(basename "$kdir")"
  done
  local f
  for f in "${drop_files[@]}"; do rm -rf "${tree:?}.tmp/$f"; done
  touch "$tree.tmp/.complete"
  mv "$tree.tmp" "$tree"
  echo "$tree"
}

# The board's settings on top of Debian, written into a staging copy of the
# tree (never the cache).
board_settings() {
  local root="$1"
  # The paths the board's boot script loads from the slot (U-Boot's ext4
  # follows these links).
  local vmlinuz initrd
  vmlinuz="$(cd "$root/boot" && ls vmlinuz-* | head -n1)"
  initrd="$(cd "$root/boot" && ls initrd.img-* | head -n1)"
  ln -sf "$vmlinuz" "$root/boot/vmlinuz"
  ln -sf "$initrd" "$root/boot/initrd.img"

  # The root stays read-only (the kernel's default without `rw`, and not in
  # fstab), so the slot keeps exactly the signed bytes.
  mkdir -p "$root/var/lib/ota-agent"
  cat >"$root/etc/fstab" <<'EOT'
/dev/vda4 /var/lib/ota-agent ext4 defaults 0 0
EOT
  # The U-Boot environment the boot script imports and exports (see
  # board_prelude): two redundant copies at the start of partition 5.
  cat >"$root/etc/fw_env.config" <<'EOT'
# device    offset  size
/dev/vda5   0x0     0x4000
/dev/vda5   0x4000  0x4000
EOT
  echo "ota-arm64-uboot" >"$root/etc/hostname"
  : >"$root/etc/machine-id"

  mkdir -p "$root/etc/systemd/network"
  cat >"$root/etc/systemd/network/20-wired.network" <<'EOT'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOT
  # The kernel's name (eth0) stays: on a slow boot networkd had started DHCP
  # on eth0 when udev came to rename it enp0s2, the rename failed ("already
  # up") and so did the link ("Failed to configure DHCPv4 client: Device or
  # resource busy"), leaving the device without a network for that boot.
  ln -sf /dev/null "$root/etc/systemd/network/99-default.link"
  chroot "$root" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1

  # U-Boot has no systemd-side boot counting to pull boot-complete.target in:
  # the board wants it, so ota-health-check.service runs each boot.
  mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
  ln -sf /usr/lib/systemd/system/boot-complete.target \
    "$root/etc/systemd/system/multi-user.target.wants/boot-complete.target"

  # The test's control channel: a root shell on the virtio console (virt has
  # one UART, the kernel's console). systemd's getty generator would start a
  # login prompt on hvc0 in a VM: masked. A board would not ship this.
  cat >"$root/etc/systemd/system/ota-test-shell.service" <<'EOT'
[Unit]
Description=Root shell on hvc0 for the full-system tests
After=systemd-user-sessions.service

[Service]
ExecStart=/bin/sh
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/hvc0
TTYReset=yes
Restart=always
RestartSec=1
# An interactive sh ignores SIGTERM: without this every reboot waits 90 s.
KillSignal=SIGHUP
TimeoutStopSec=5

[Install]
WantedBy=multi-user.target
EOT
  ln -sf /dev/null "$root/etc/systemd/system/serial-getty@hvc0.service"
  chroot "$root" systemctl enable ota-test-shell.service >/dev/null 2>&1
  # For the tests only, as on the x86 boards: the hung agent is killed after
  # 30 s without a WATCHDOG=1 and restarted 2 s later (shipped: 120 s, 30 s).
  mkdir -p "$root/etc/systemd/system/ota-agent.service.d"
  printf '[Service]\nWatchdogSec=30\nRestartSec=2\n' \
    >"$root/etc/systemd/system/ota-agent.service.d/ota-test-watchdog.conf"
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\nStorage=volatile\n' \
    >"$root/etc/systemd/journald.conf.d/ota-console.conf"
}

cmd_slot() {
  local rootfs="$1" agent="$2" overlay="$3" out="$4"
  if ! file -L "$agent" | grep -q 'ARM aarch64'; then
    echo "$agent is not an aarch64 binary: cargo build -p ota-agent --target aarch64-unknown-linux-gnu" >&2
    exit 1
  fi
  local stage
  stage="$(mktemp -d "${out}.stage.XXXXXX")"
  trap 'rm -rf "$stage"' RETURN
  cp -al "$rootfs/." "$stage/"
  rm -f "$stage/.complete"
  board_settings "$stage"
  mkdir -p "$stage/usr/bin"
  aarch64-linux-gnu-strip --strip-debug -o "$stage/usr/bin/ota-agent" "$agent"
  chmod 0755 "$stage/usr/bin/ota-agent"
  local unit
  for unit in ota-agent.service ota-health-check.service; do
    install -D -m 0644 "$workspace/systemd/$unit" "$stage/usr/lib/systemd/system/$unit"
  done
  chroot "$stage" systemctl enable ota-health-check.service ota-agent.service >/dev/null 2>&1
  local rel
  while IFS= read -r -d '' rel; do
    rm -f "$stage/$rel"
    mkdir -p "$(dirname "$stage/$rel")"
    cp -a "$overlay/$rel" "$stage/$rel"
  done < <(cd "$overlay" && find . \( -type f -o -type l \) -printf '%P\0')
  local kib
  kib="$(du -sk "$stage" | cut -f1)"
  kib=$((kib + kib / 8 + 16384))
  rm -f "$out"
  mke2fs -q -F -t ext4 -O ^has_journal -L rootfs -d "$stage" "$out" "${kib}k" >/dev/null
}

# The board's part of the boot script, run before the shipped boot.cmd: where
# the slots are on this machine, what the kernel needs, and the environment.
#
# Debian's qemu_arm64 U-Boot keeps its own environment in the second flash
# bank (one copy, ENV_IS_IN_FLASH) and cannot be rebuilt here. The OTA
# variables live instead in a redundant environment on partition 5, in the
# layout fw_env.config describes (two copies of 16 KiB: CRC, flag byte,
# data), which the agent writes. ota_env_load brings them in with
# `env import -c` from the current copy (higher flag, 0xff wrapping to 0, or
# the other copy when its CRC fails), ota_env_save writes them with
# `env export -c` to the other copy with the flag + 1, so a cut mid-write
# leaves the current copy. boot.cmd saves before it boots the kernel. Only
# the variables in ota_env_vars cross over: the firmware's own (fdtcontroladdr,
# bootcmd, ...) never come from the partition.
#
# Memory: 0x4c000000 copy 0, 0x4c010000 copy 1, 0x4c020000 scratch,
# 0x4c030000 the copy being written (above the initramfs at ramdisk_addr_r).
board_prelude() {
  cat <<'EOS'
# Board 3 of docs/FULL-SYSTEM.md: QEMU virt, virtio disk, Debian's arm64 kernel.
setenv ota_devtype virtio
setenv ota_devnum 0
setenv ota_part_A 2
setenv ota_part_B 3
setenv ota_root_A /dev/vda2
setenv ota_root_B /dev/vda3
setenv ota_kernel /boot/vmlinuz
setenv ota_initrd /boot/initrd.img
setenv ota_fdt_addr ${fdtcontroladdr}
setenv ota_bootargs "console=ttyAMA0 panic=5"
setenv ota_env_part 5
setenv ota_env_vars "BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT upgrade_available bootcount"
setenv ota_env_load 'virtio scan; part start virtio 0 ${ota_env_part} ota_env_blk0; setexpr ota_env_blk1 ${ota_env_blk0} + 20; virtio read 4c000000 ${ota_env_blk0} 20; virtio read 4c010000 ${ota_env_blk1} 20; setexpr.b ota_env_flag0 *4c000004; setexpr.b ota_env_flag1 *4c010004; setenv ota_env_try "0 1"; if itest.b *4c010004 > *4c000004; then setenv ota_env_try "1 0"; fi; if itest.b *4c000004 == 0 && itest.b *4c010004 == ff; then setenv ota_env_try "0 1"; fi; if itest.b *4c000004 == ff && itest.b *4c010004 == 0; then setenv ota_env_try "1 0"; fi; cp.b 4c000000 4c020000 4; cp.b 4c020000 4c000001 4; cp.b 4c010000 4c020000 4; cp.b 4c020000 4c010001 4; setenv ota_env_from; for c in ${ota_env_try}; do if test -z "${ota_env_from}" && env import -c 4c0${c}0001 3fff ${ota_env_vars}; then setenv ota_env_from ${c}; fi; done; if test -z "${ota_env_from}"; then echo "OTA: no valid copy of the environment on partition ${ota_env_part}; defaults"; setenv ota_env_from 1; setenv ota_env_flag1 0; fi; echo "OTA: environment copy ${ota_env_from} (flags ${ota_env_flag0} ${ota_env_flag1})"'
setenv ota_env_save 'setenv ota_env_to 0; setenv ota_env_flag ${ota_env_flag0}; setenv ota_env_blk ${ota_env_blk1}; if test "${ota_env_from}" = 1; then setenv ota_env_flag ${ota_env_flag1}; setenv ota_env_blk ${ota_env_blk0}; else setenv ota_env_to 1; fi; setexpr ota_env_flag ${ota_env_flag} + 1; if itest ${ota_env_flag} > ff; then setenv ota_env_flag 0; fi; mw.b 4c030000 0 4000; env export -c -s 3fff 4c030001 ${ota_env_vars}; cp.b 4c030001 4c020000 4; cp.b 4c020000 4c030000 4; mw.b 4c030004 ${ota_env_flag}; if virtio write 4c030000 ${ota_env_blk} 20; then echo "OTA: environment saved to copy ${ota_env_to} (flag ${ota_env_flag})"; else echo "OTA: saving the environment failed"; fi'
EOS
}

cmd_disk() {
  local slot_a="$1" slot_mib="$2" out="$3"
  local boot_mib=16 data_mib=64 env_mib=1
  local a_bytes
  a_bytes="$(stat -c %s "$slot_a")"
  if [ "$a_bytes" -gt $((slot_mib * 1024 * 1024)) ]; then
    echo "slot image $slot_a ($a_bytes bytes) does not fit a ${slot_mib} MiB slot" >&2
    exit 1
  fi
  local tmp
  tmp="$(mktemp -d "${out}.parts.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN

  # Partition 1: what U-Boot's distro boot finds on the first partition of
  # virtio 0, boot.scr: the board's prelude, then the shipped boot.cmd verbatim.
  { board_prelude; echo; cat "$workspace/boot/uboot/boot.cmd"; } >"$tmp/boot.cmd"
  mkimage -A arm64 -T script -C none -n "OTA A/B (board 3)" -d "$tmp/boot.cmd" "$tmp/boot.scr" >/dev/null
  mkfs.vfat -C -n BOOT "$tmp/boot.img" $((boot_mib * 1024)) >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -i "$tmp/boot.img" "$tmp/boot.scr" ::/boot.scr

  mke2fs -q -F -t ext4 -L ota-data "$tmp/data.img" "${data_mib}M" >/dev/null

  # Partition 5: the factory environment, copy 0 valid (flag 1, as
  # mkenvimage -r writes it), copy 1 blank: the first write goes there.
  printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' >"$tmp/env.txt"
  mkenvimage -r -s 0x4000 -o "$tmp/env.img" "$tmp/env.txt"

  rm -f "$out"
  local total=$((1 + boot_mib + 2 * slot_mib + data_mib + env_mib + 1))
  truncate -s "${total}M" "$out"
  sfdisk -q "$out" <<EOT
label: gpt
start=1MiB, size=${boot_mib}MiB, type=linux, name=boot
size=${slot_mib}MiB, type=linux, name=root-a
size=${slot_mib}MiB, type=linux, name=root-b
size=${data_mib}MiB, type=linux, name=ota-data
size=${env_mib}MiB, type=linux, name=uboot-env
EOT
  dd if="$tmp/boot.img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$slot_a" of="$out" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
  dd if="$tmp/data.img" of="$out" bs=1M seek=$((1 + boot_mib + 2 * slot_mib)) conv=notrunc,sparse status=none
  dd if="$tmp/env.img" of="$out" bs=1M seek=$((1 + boot_mib + 2 * slot_mib + data_mib)) conv=notrunc status=none
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
