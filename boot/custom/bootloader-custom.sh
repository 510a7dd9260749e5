#!/bin/sh
# Example custom bootloader backend for ota-agent (RAUC's custom bootloader
# interface). Install as /usr/lib/ota/bootloader-custom and set
#   [boot]
#   backend = "custom"
#   custom_command = ["/usr/lib/ota/bootloader-custom"]
#
#   bootloader-custom get-primary            -> A|B
#   bootloader-custom set-primary A|B
#   bootloader-custom get-state A|B          -> good|bad
#   bootloader-custom set-state A|B good|bad
#   bootloader-custom get-current            -> A|B
#
# This example keeps its state in a small file (OTA_CUSTOM_STATE, default
# /var/lib/ota-bootloader/state) that the board's boot firmware is assumed to
# read; on a real board replace load/save with whatever the firmware reads
# (an EEPROM, an NVRAM variable, a boot partition register). The firmware
# side boots PRIMARY, or the other slot when PRIMARY is bad.
#
# Exit status 0 on success; on failure a message on stderr and status 1
# (bad state) or 2 (bad usage). Only POSIX sh features.
set -eu

STATE=${OTA_CUSTOM_STATE:-/var/lib/ota-bootloader/state}
CMDLINE=${OTA_CUSTOM_CMDLINE:-/proc/cmdline}

die() { echo "bootloader-custom: $2" >&2; exit "$1"; }

check_slot() {
    case "$1" in A|B) ;; *) die 2 "unknown slot '$1' (expected A or B)" ;; esac
}

other() { if [ "$1" = A ]; then echo B; else echo A; fi; }

# Factory state: A is the good primary, B was never written.
PRIMARY=A A_STATE=good B_STATE=bad

load() {
    [ -f "$STATE" ] || return 0
    while IFS='=' read -r key value; do
        case "$key" in
            PRIMARY) case "$value" in A|B) PRIMARY=$value ;; *) die 1 "$STATE: PRIMARY='$value'" ;; esac ;;
            A_STATE) case "$value" in good|bad) A_STATE=$value ;; *) die 1 "$STATE: A_STATE='$value'" ;; esac ;;
            B_STATE) case "$value" in good|bad) B_STATE=$value ;; *) die 1 "$STATE: B_STATE='$value'" ;; esac ;;
            '') ;;
            *) die 1 "$STATE: unknown key '$key'" ;;
        esac
    done < "$STATE"
}

# Power-cut safe: a complete temp file is synced, then renamed over the old one.
save() {
    dir=$(dirname "$STATE")
    mkdir -p "$dir"
    tmp="$dir/.state.$$"
    printf 'PRIMARY=%s\nA_STATE=%s\nB_STATE=%s\n' "$PRIMARY" "$A_STATE" "$B_STATE" > "$tmp"
    sync "$tmp" 2>/dev/null || sync
    mv -f "$tmp" "$STATE"
    sync "$dir" 2>/dev/null || sync
}

state_of() { if [ "$1" = A ]; then echo "$A_STATE"; else echo "$B_STATE"; fi; }

[ $# -ge 1 ] || die 2 "usage: $0 get-primary|set-primary SLOT|get-state SLOT|set-state SLOT good|bad|get-current"
cmd=$1
shift
case "$cmd" in
    get-primary)
        [ $# -eq 0 ] || die 2 "get-primary takes no argument"
        load
        # What the firmware boots: the primary unless it is bad.
        if [ "$(state_of "$PRIMARY")" = bad ] && [ "$(state_of "$(other "$PRIMARY")")" = good ]; then
            other "$PRIMARY"
        else
            echo "$PRIMARY"
        fi
        ;;
    set-primary)
        [ $# -eq 1 ] || die 2 "set-primary takes a slot"
        check_slot "$1"
        load
        PRIMARY=$1
        save
        ;;
    get-state)
        [ $# -eq 1 ] || die 2 "get-state takes a slot"
        check_slot "$1"
        load
        state_of "$1"
        ;;
    set-state)
        [ $# -eq 2 ] || die 2 "set-state takes a slot and good|bad"
        check_slot "$1"
        case "$2" in good|bad) ;; *) die 2 "unknown state '$2' (expected good or bad)" ;; esac
        load
        if [ "$1" = A ]; then A_STATE=$2; else B_STATE=$2; fi
        save
        ;;
    get-current)
        [ $# -eq 0 ] || die 2 "get-current takes no argument"
        for word in $(cat "$CMDLINE"); do
            case "$word" in
                ota.slot=A|rauc.slot=A) echo A; exit 0 ;;
                ota.slot=B|rauc.slot=B) echo B; exit 0 ;;
            esac
        done
        die 1 "no ota.slot= or rauc.slot= on the kernel command line ($CMDLINE)"
        ;;
    *)
        die 2 "unknown command '$cmd'"
        ;;
esac
