#!/usr/bin/env bash
# End-to-end smoke test of the libvirt test bed, through virsh over TCP:
# storage pool + template upload (stream) + qcow2 overlay, define a `qemu` (TCG) domain
# with direct kernel boot and a file-backed serial console, start, wait for the ready
# line, snapshot create/revert/delete, ACPI shutdown, undefine with storage, and check
# nothing is left. Prints timings on stdout (TIMING_*_MS=…).
#
#   tests/libvirt/smoke.sh [GUEST_DIR]     (default /tmp/hyperplane-guest)
#
# Runs setup.sh and build-guest.sh itself (both are no-ops when already done).
# Environment: READY_TIMEOUT (s, default 180), SHUTDOWN_TIMEOUT (s, default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_DIR=${1:-/tmp/hyperplane-guest}
READY_TIMEOUT=${READY_TIMEOUT:-180}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-60}

log() { printf 'smoke: %s\n' "$*" >&2; }
die() { printf 'smoke: FAIL: %s\n' "$*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

eval "$("$HERE/setup.sh")"
eval "$("$HERE/build-guest.sh" "$GUEST_DIR")"
V=(virsh -q -c "$LIBVIRT_QEMU_URI")

NAME=hp-smoke-$$
POOL=hp-smoke-pool-$$
WORK=$LIBVIRT_STATE_DIR/smoke-$$
MAC=52:54:00:$(printf '%02x:%02x:%02x' $((RANDOM % 256)) $((RANDOM % 256)) $((RANDOM % 256)))
SERIAL=$WORK/serial.log
mkdir -p "$WORK/pool"

cleanup() {
  "${V[@]}" destroy "$NAME" >/dev/null 2>&1 || true
  "${V[@]}" undefine "$NAME" --snapshots-metadata --remove-all-storage >/dev/null 2>&1 || true
  "${V[@]}" pool-destroy "$POOL" >/dev/null 2>&1 || true
  [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

state() { "${V[@]}" domstate "$NAME" 2>/dev/null | head -n1; }
is_off() { [[ $(state) == "shut off" ]]; }
wait_for() { # timeout_s description command...
  local limit=$1 deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@"; do
    (($(date +%s) < deadline)) || die "timeout after ${limit}s waiting for $what"
    sleep 0.2
  done
}

# Storage: a transient dir pool, the template uploaded as a volume through a libvirt
# stream, and a qcow2 overlay backed by it (what the driver does per instance).
"${V[@]}" pool-create-as "$POOL" dir --target "$WORK/pool" >/dev/null
size=$(stat -c %s "$GUEST_BASE_QCOW2")
"${V[@]}" vol-create-as "$POOL" base.qcow2 "$size" --format raw >/dev/null
"${V[@]}" vol-upload --pool "$POOL" base.qcow2 "$GUEST_BASE_QCOW2"
"${V[@]}" vol-create-as "$POOL" "$NAME.qcow2" 64M --format qcow2 \
  --backing-vol base.qcow2 --backing-vol-format qcow2 >/dev/null

cat >"$WORK/domain.xml" <<EOF
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_KERNEL</kernel>
    <initrd>$GUEST_INITRD</initrd>
    <cmdline>$GUEST_CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='$POOL' volume='$NAME.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='$MAC'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='$SERIAL'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
EOF

"${V[@]}" define "$WORK/domain.xml" >/dev/null
t0=$(now_ms)
"${V[@]}" start "$NAME" >/dev/null
t1=$(now_ms)
log "started $NAME (virsh start took $((t1 - t0)) ms), vnc $("${V[@]}" vncdisplay "$NAME")"
wait_for "$READY_TIMEOUT" "$GUEST_READY_LINE on the serial console" grep -q "$GUEST_READY_LINE" "$SERIAL"
t2=$(now_ms)
grep -q "HYPERPLANE-GUEST-INFO nic .* $MAC" "$SERIAL" || die "guest does not see NIC with MAC $MAC"
grep -q "HYPERPLANE-GUEST-INFO disk vda 67108864" "$SERIAL" || die "guest does not see the 64M vda overlay"
log "guest ready ($((t2 - t0)) ms after start): $(grep "$GUEST_READY_LINE" "$SERIAL")"

# Internal snapshot of the running guest (memory + qcow2 disk), revert, delete.
t3=$(now_ms)
"${V[@]}" snapshot-create-as "$NAME" snap1 >/dev/null
"${V[@]}" snapshot-list "$NAME" --name | grep -qx snap1 || die "snapshot not listed"
"${V[@]}" snapshot-revert "$NAME" snap1
[[ $(state) == running ]] || die "not running after revert: $(state)"
"${V[@]}" snapshot-delete "$NAME" snap1 >/dev/null
t4=$(now_ms)
log "snapshot create/revert/delete took $((t4 - t3)) ms"

"${V[@]}" shutdown "$NAME" --mode acpi >/dev/null
t5=$(now_ms)
wait_for "$SHUTDOWN_TIMEOUT" "shut off after ACPI shutdown" is_off
t6=$(now_ms)
grep -q HYPERPLANE-GUEST-POWEROFF "$SERIAL" || die "guest did not log its ACPI power-off handler"
log "ACPI shutdown to shut off: $((t6 - t5)) ms"

"${V[@]}" undefine "$NAME" --snapshots-metadata --remove-all-storage >/dev/null
"${V[@]}" vol-delete --pool "$POOL" base.qcow2 >/dev/null
"${V[@]}" pool-destroy "$POOL" >/dev/null

# Nothing left: domain, pool, volumes, QEMU process.
! "${V[@]}" list --all --name | grep -qx "$NAME" || die "domain $NAME still defined"
! "${V[@]}" pool-list --all --name | grep -qx "$POOL" || die "pool $POOL still there"
[[ -z $(ls -A "$WORK/pool") ]] || die "volumes left in $WORK/pool: $(ls "$WORK/pool")"
! pgrep -f "guest=$NAME," >/dev/null || die "a QEMU process for $NAME is still running"

echo "TIMING_START_MS=$((t1 - t0))"
echo "TIMING_START_TO_READY_MS=$((t2 - t0))"
echo "TIMING_SNAPSHOT_CYCLE_MS=$((t4 - t3))"
echo "TIMING_ACPI_SHUTDOWN_MS=$((t6 - t5))"
log "PASS"
