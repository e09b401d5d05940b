#!/usr/bin/env bash
# Build a tiny bootable guest: a Debian cloud kernel (from its .deb) + a busybox-static
# initramfs, for direct kernel boot and as a bootable disk image (a template).
#
#   tests/libvirt/build-guest.sh OUTDIR
#
# OUTDIR gets vmlinuz, initrd.img, base.qcow2 (empty, for overlays), boot.qcow2 (bootable:
# SYSLINUX, the kernel and the initramfs on an unpartitioned FAT filesystem) and guest.env
# (also printed on stdout as KEY=VALUE lines). Cached: a second run with the same script
# and kernel does nothing. Needs busybox-static, cpio, qemu-img, syslinux, mtools and
# dosfstools (setup.sh installs them) and Debian's apt lists.
#
# The guest's /init mounts proc/sys/dev, loads button+evdev (ACPI power button ->
# input event) and virtio (disk, NIC), starts busybox acpid whose PWRF handler runs
# `poweroff -f`, prints one "HYPERPLANE-GUEST-INFO ..." line per NIC and disk, then
# "HYPERPLANE-GUEST-READY" on the console, and runs a shell there. Boot with cmdline
# "console=ttyS0".
#
# Environment: GUEST_KERNEL_PKG overrides the kernel package (default: what
# linux-image-cloud-amd64 depends on in the apt candidate, e.g. linux-image-6.1.0-56-cloud-amd64).
set -euo pipefail

OUT=${1:?usage: build-guest.sh OUTDIR}
log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { printf 'build-guest: ERROR: %s\n' "$*" >&2; exit 1; }
for b in busybox cpio gzip qemu-img dpkg-deb apt-get syslinux mcopy mkfs.vfat; do
  command -v "$b" >/dev/null || die "$b not found (run tests/libvirt/setup.sh first)"
done
[[ $(busybox --list) == *acpid* ]] || die "busybox has no acpid applet (need busybox-static)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

kernel_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'
}
pkg=${GUEST_KERNEL_PKG:-$(kernel_pkg)}
if [[ -z $pkg ]]; then # apt lists never fetched on this machine
  apt-get update -qq >&2 || die "apt-get update failed"
  pkg=$(kernel_pkg)
fi
[[ -n $pkg ]] || die "cannot resolve the dependency of linux-image-cloud-amd64"
stamp="$pkg $(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [[ -s $OUT/guest.env && $(cat "$OUT/.stamp" 2>/dev/null) == "$stamp" ]]; then
  log "cached in $OUT ($pkg)"
  cat "$OUT/guest.env"
  exit 0
fi

# --- kernel -------------------------------------------------------------------
cd "$OUT"
shopt -s nullglob
debs=("$pkg"_*.deb)
if ((${#debs[@]} == 0)); then
  log "downloading $pkg"
  # A stale apt list points at a version the mirror no longer has: update, retry once.
  apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2 \
    || { apt-get update -qq >&2 && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2; } \
    || die "apt-get download $pkg failed"
  debs=("$pkg"_*.deb)
fi
((${#debs[@]})) || die "no $pkg .deb in $OUT"
deb=${debs[0]}
rm -rf "$OUT/kernel" && mkdir "$OUT/kernel"
dpkg-deb -x "$deb" "$OUT/kernel"
kver=${pkg#linux-image-}
install -m 0644 "$OUT/kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz"

# --- initramfs ----------------------------------------------------------------
root="$OUT/initramfs"
rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,etc/acpi/PWRF,lib/modules}
cp "$(command -v busybox)" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
# Load order follows each module's depends= (no modules.dep in the .deb).
mods=(button evdev virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  failover net_failover virtio_net virtio_blk)
for m in "${mods[@]}"; do
  f=$(find "$OUT/kernel/lib/modules/$kver" -name "$m.ko" | head -n1)
  [[ -n $f ]] || die "module $m.ko not in $pkg"
  cp "$f" "$root/lib/modules/"
done
# busybox acpid maps the KEY_POWER input event to "PWRF/00000080" and runs that
# path relative to its config dir.
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "HYPERPLANE-GUEST-POWEROFF" >/dev/console
sync
poweroff -f
EOF
cat >"$root/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${mods[*]}; do insmod /lib/modules/\$m.ko || echo "HYPERPLANE-GUEST-WARN insmod \$m failed"; done
sleep 1  # let virtio devices probe
ip link set lo up
acpid -c /etc/acpi -l /dev/null || echo "HYPERPLANE-GUEST-WARN acpid failed"
for n in /sys/class/net/*; do
  [ "\${n##*/}" = lo ] || echo "HYPERPLANE-GUEST-INFO nic \${n##*/} \$(cat \$n/address)"
done
for d in /sys/block/vd*; do
  [ -e "\$d" ] && echo "HYPERPLANE-GUEST-INFO disk \${d##*/} \$((\$(cat \$d/size) * 512))"
done
echo "HYPERPLANE-GUEST-READY kernel=\$(uname -r) uptime=\$(cut -d' ' -f1 /proc/uptime)"
# A shell on the console: what is sent to the serial port runs.
while :; do sh; sleep 1; done
EOF
chmod 0755 "$root/init" "$root/etc/acpi/PWRF/00000080"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -9) >"$OUT/initrd.img.new"
mv "$OUT/initrd.img.new" "$OUT/initrd.img"
chmod 0644 "$OUT/initrd.img"
rm -rf "$root" "$OUT/kernel"

# --- base volume: empty, for qcow2 overlays (the guest runs from its initramfs) ---
[[ -s $OUT/base.qcow2 ]] || qemu-img create -q -f qcow2 "$OUT/base.qcow2" 64M
chmod 0644 "$OUT/base.qcow2"

# --- bootable disk: SYSLINUX on an unpartitioned FAT image --------------------
# SeaBIOS boots sector 0 like a floppy's; no partition table, no loop mount, no root
# needed for mtools. The template the end-to-end tests upload.
raw="$OUT/boot.raw"
rm -f "$raw" && truncate -s 48M "$raw"
mkfs.vfat -n HPGUEST "$raw" >/dev/null
syslinux --install "$raw"
printf '%s\n' 'DEFAULT guest' 'TIMEOUT 0' 'PROMPT 0' 'LABEL guest' '  KERNEL vmlinuz' \
  '  INITRD initrd.img' '  APPEND console=ttyS0' >"$OUT/syslinux.cfg"
mcopy -i "$raw" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/syslinux.cfg" ::/
qemu-img convert -q -f raw -O qcow2 "$raw" "$OUT/boot.qcow2"
rm -f "$raw" "$OUT/syslinux.cfg"
chmod 0644 "$OUT/boot.qcow2"

cat >"$OUT/guest.env" <<EOF
GUEST_BOOT_QCOW2=$OUT/boot.qcow2
GUEST_KERNEL=$OUT/vmlinuz
GUEST_INITRD=$OUT/initrd.img
GUEST_BASE_QCOW2=$OUT/base.qcow2
GUEST_CMDLINE=console=ttyS0
GUEST_READY_LINE=HYPERPLANE-GUEST-READY
GUEST_KERNEL_PKG=$pkg
EOF
echo "$stamp" >"$OUT/.stamp"
log "built in $OUT ($pkg)"
cat "$OUT/guest.env"
