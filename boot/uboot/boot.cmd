# A/B slot choice for the OTA agent, RAUC's U-Boot convention. The agent's
# U-Boot backend (agent/src/bootloader/uboot.rs) writes the same variables:
#
#   BOOT_ORDER   "A B": slots in the order they are tried
#   BOOT_A_LEFT  boots left for slot A (BOOT_B_LEFT for B)
#
# The first slot in BOOT_ORDER with boots left is booted and one boot is
# spent (saved before the kernel starts, so a hang costs a try too). A slot
# on trial has 1 left: if it is not marked good, the next boot takes the
# other. When no slot has any left, both get 3 back and the board resets.
#
# Build: mkimage -A arm64 -T script -C none -n "OTA A/B" -d boot.cmd boot.scr
#
# Board settings (defaults below; override them in the default environment):
#   ota_devtype ota_devnum   device holding the slots           (mmc 0)
#   ota_part_A ota_part_B    partition of each slot             (2 3)
#   ota_root_A ota_root_B    root= of each slot                 (/dev/mmcblk0p2 /dev/mmcblk0p3)
#   ota_kernel ota_fdt       kernel and device tree in the slot (/boot/Image /boot/board.dtb)
#   ota_bootargs             the rest of the kernel command line
# Optional (unset: not used):
#   ota_initrd               initramfs in the slot, loaded at ${ramdisk_addr_r}
#   ota_fdt_addr             a device tree already in memory (e.g. ${fdtcontroladdr},
#                            the one QEMU or the firmware passed); ota_fdt is then not loaded
#   ota_env_load             a command run first, to bring the environment in
#   ota_env_save             a command run instead of saveenv: where the
#                            firmware's own environment is not the one the agent
#                            writes, these two move the counters between them
#                            (board 3 of docs/FULL-SYSTEM.md); the spent try is
#                            saved before the kernel starts either way
#
# U-Boot's boot counter (CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV)
# counts boots while upgrade_available=1 (the agent sets it while a slot is on
# trial) and runs altbootcmd once bootcount exceeds bootlimit: point
# altbootcmd at this script as well; the counters already choose the fallback.

if test -n "${ota_env_load}"; then run ota_env_load; fi

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

test -n "${ota_devtype}" || setenv ota_devtype mmc
test -n "${ota_devnum}" || setenv ota_devnum 0
test -n "${ota_part_A}" || setenv ota_part_A 2
test -n "${ota_part_B}" || setenv ota_part_B 3
test -n "${ota_root_A}" || setenv ota_root_A /dev/mmcblk0p2
test -n "${ota_root_B}" || setenv ota_root_B /dev/mmcblk0p3
test -n "${ota_kernel}" || setenv ota_kernel /boot/Image
test -n "${ota_fdt}" || setenv ota_fdt /boot/board.dtb

setenv ota_slot
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test -z "${ota_slot}" && test "x${BOOT_SLOT}" = "xA" && test ${BOOT_A_LEFT} -gt 0; then
    setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
    setenv ota_slot A
    setenv ota_part ${ota_part_A}
    setenv ota_root ${ota_root_A}
  fi
  if test -z "${ota_slot}" && test "x${BOOT_SLOT}" = "xB" && test ${BOOT_B_LEFT} -gt 0; then
    setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
    setenv ota_slot B
    setenv ota_part ${ota_part_B}
    setenv ota_root ${ota_root_B}
  fi
done

if test -n "${ota_slot}"; then
  echo "OTA: booting slot ${ota_slot} (A left ${BOOT_A_LEFT}, B left ${BOOT_B_LEFT})"
  if test -n "${ota_env_save}"; then run ota_env_save; else saveenv; fi
else
  echo "OTA: no slot has boots left; giving both 3 and resetting"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  if test -n "${ota_env_save}"; then run ota_env_save; else saveenv; fi
  reset
fi

setenv bootargs "${ota_bootargs} root=${ota_root} rootwait ota.slot=${ota_slot}"
load ${ota_devtype} ${ota_devnum}:${ota_part} ${kernel_addr_r} ${ota_kernel}
setenv ota_rd -
if test -n "${ota_initrd}"; then
  load ${ota_devtype} ${ota_devnum}:${ota_part} ${ramdisk_addr_r} ${ota_initrd}
  setenv ota_rd ${ramdisk_addr_r}:${filesize}
fi
setenv ota_dt ${ota_fdt_addr}
if test -z "${ota_dt}"; then
  load ${ota_devtype} ${ota_devnum}:${ota_part} ${fdt_addr_r} ${ota_fdt}
  setenv ota_dt ${fdt_addr_r}
fi
booti ${kernel_addr_r} ${ota_rd} ${ota_dt}

# booti returns only if the slot cannot be booted: the try is already spent,
# so a reset moves on (to the other slot once this one has none left).
echo "OTA: slot ${ota_slot} did not boot; resetting"
reset
