#!/usr/bin/env bash
# Reference board 2 of the full-system tests (docs/FULL-SYSTEM.md): x86_64,
# UEFI (OVMF) + systemd-boot with the shipped boot/systemd-boot/ loader.conf
# and Boot Loader Specification entries (boot counting). The same Debian 12
# slots as board 1, the same GPT layout but a larger ESP: systemd-boot reads
# kernels from the ESP only. Needs root.
#
#   build-x86-sdboot.sh rootfs CACHE_DIR
#   build-x86-sdboot.sh slot ROOTFS AGENT_BIN OVERLAY OUT.img
#       As build-x86-grub.sh (the same cached tree and slot recipe); the
#       slot's settings differ in the hostname and boot-complete.target.
#   build-x86-sdboot.sh disk SLOT_A.img SLOT_MIB OUT.disk
#       The factory disk: GPT, an ESP with systemd-boot as the removable-media
#       loader, loader/loader.conf and the two entries (A good, B bad) from
#       boot/systemd-boot/, and each slot's kernel and initramfs under
#       /ota/a/ and /ota/b/ (both taken from SLOT_A.img: see below); slot A
#       written, slot B empty, an empty ext4 data partition.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
sdboot_efi=/usr/lib/systemd/boot/efi/systemd-bootx64.efi

# Two kernels and initramfs images (about 15 MiB a pair) and systemd-boot.
esp_mib=64

cmd_disk() {
  local slot_a="$1" slot_mib="$2" out="$3"
  local data_mib=64
  local a_bytes
  a_bytes="$(stat -c %s "$slot_a")"
  if [ "$a_bytes" -gt $((slot_mib * 1024 * 1024)) ]; then
    echo "slot image $slot_a ($a_bytes bytes) does not fit a ${slot_mib} MiB slot" >&2
    exit 1
  fi
  if [ ! -e "$sdboot_efi" ]; then
    echo "$sdboot_efi is missing: apt-get install systemd-boot-efi" >&2
    exit 1
  fi
  local tmp
  tmp="$(mktemp -d "${out}.parts.XXXXXX")"
  trap 'rm -rf "$tmp"' RETURN

  # The kernel and initramfs of the factory release, read out of its image.
  # The agent installs root filesystems only, so these stay what every
  # release of this board boots: a release brings a new root, never a new
  # kernel (docs/DEVICE-INTEGRATION.md). Each slot still gets its own path,
  # which is what the shipped entries name.
  local vmlinuz initrd
  vmlinuz="$(debugfs -R 'ls -p /boot' "$slot_a" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6; exit}')"
  initrd="$(debugfs -R 'ls -p /boot' "$slot_a" 2>/dev/null | awk -F/ '$6 ~ /^initrd.img-/ {print $6; exit}')"
  if [ -z "$vmlinuz" ] || [ -z "$initrd" ]; then
    echo "no /boot/vmlinuz-* and /boot/initrd.img-* in $slot_a" >&2
    exit 1
  fi
  debugfs -R "dump /boot/$vmlinuz $tmp/vmlinuz" "$slot_a" 2>/dev/null
  debugfs -R "dump /boot/$initrd $tmp/initrd.img" "$slot_a" 2>/dev/null

  # The shipped entries; the board's part is the kernel command line: its
  # root device (the AHCI disk, like board 1's grub.cfg) and the serial
  # console. The shipped panic=10 stays.
  local entries="$workspace/boot/systemd-boot/entries"
  sed -e 's|root=PARTLABEL=rootfs-a|root=/dev/sda2|' -e '/^options/ s|$| console=ttyS0,115200|' \
    "$entries/ota-a.conf" >"$tmp/ota-a.conf"
  sed -e 's|root=PARTLABEL=rootfs-b|root=/dev/sda3|' -e '/^options/ s|$| console=ttyS0,115200|' \
    "$entries/ota-b+0-0.conf" >"$tmp/ota-b+0-0.conf"

  mkfs.vfat -C -n ESP "$tmp/esp.img" $((esp_mib * 1024)) >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/ota ::/ota/a ::/ota/b
  # The removable-media path: fresh OVMF variables have no boot entry for it.
  mcopy -i "$tmp/esp.img" "$sdboot_efi" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$tmp/esp.img" "$workspace/boot/systemd-boot/loader.conf" ::/loader/loader.conf
  mcopy -i "$tmp/esp.img" "$tmp/ota-a.conf" "$tmp/ota-b+0-0.conf" ::/loader/entries/
  local s
  for s in a b; do
    mcopy -i "$tmp/esp.img" "$tmp/vmlinuz" "$tmp/initrd.img" "::/ota/$s/"
  done

  mke2fs -q -F -t ext4 -L ota-data "$tmp/data.img" "${data_mib}M" >/dev/null

  rm -f "$out"
  local total=$((1 + esp_mib + 2 * slot_mib + data_mib + 1))
  truncate -s "${total}M" "$out"
  sfdisk -q "$out" <<EOT
label: gpt
start=1MiB, size=${esp_mib}MiB, type=uefi, name=esp
size=${slot_mib}MiB, type=linux, name=rootfs-a
size=${slot_mib}MiB, type=linux, name=rootfs-b
size=${data_mib}MiB, type=linux, name=ota-data
EOT
  dd if="$tmp/esp.img" of="$out" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$slot_a" of="$out" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
  dd if="$tmp/data.img" of="$out" bs=1M seek=$((1 + esp_mib + 2 * slot_mib)) conv=notrunc,sparse status=none
}

case "${1:-}" in
  rootfs | slot) OTA_BOARD_BOOTLOADER=systemd-boot exec "$here/build-x86-grub.sh" "$@" ;;
  disk) shift; cmd_disk "$@" ;;
  *)
    echo "usage: $0 rootfs CACHE_DIR | slot ROOTFS AGENT OVERLAY OUT.img | disk SLOT_A.img SLOT_MIB OUT.disk" >&2
    exit 2
    ;;
esac
