#!/usr/bin/env bash
# Install libvirt + QEMU from Debian and start virtlogd + libvirtd by hand (no systemd).
#
# stdout: KEY=VALUE lines only (the endpoints), so a harness can do
#   eval "$(tests/libvirt/setup.sh)"      or      . "$LIBVIRT_STATE_DIR/env"
# stderr: progress and errors. Safe to run again: installed packages and running
# daemons are detected and reused. Stop with tests/libvirt/stop.sh.
#
# Environment (all optional):
#   LIBVIRT_STATE_DIR  config, sockets, pid files, logs   (default /tmp/hyperplane-libvirt)
#   LIBVIRT_PORT       TCP port on 127.0.0.1, auth none    (default 16509)
# python3-libvirt lives in Debian's /usr/bin/python3, not in a pyenv python3 on PATH:
# use $LIBVIRT_PYTHON.
set -euo pipefail

STATE=${LIBVIRT_STATE_DIR:-/tmp/hyperplane-libvirt}
PORT=${LIBVIRT_PORT:-16509}
RUN="$STATE/run"
SOCK="$RUN/libvirt-sock"
TEST_URI="test+tcp://127.0.0.1:$PORT/default"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (installs packages, runs the system libvirtd)"

# Test processes may call this concurrently: one at a time (an install can take minutes).
mkdir -p "$STATE"
exec 9>"$STATE/setup.lock"
flock -w 900 9 || die "another setup.sh has held $STATE/setup.lock for 15 minutes"

# Starts a daemon with none of our descriptors beyond stdio: it would hold the lock on fd 9
# for good (the next setup.sh would wait forever), or a pipe of whoever ran us open (its
# reader would never see the end of our output).
detached() {
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec $fd>&-"; fi
    done
    exec "$@"
  )
}

# --- packages ---------------------------------------------------------------
# Why bookworm-backports: the machine ships qemu-utils 10 from bookworm-backports, and
# bookworm's qemu-system-x86 7.2 needs qemu-system-common 7.2, which conflicts with it.
# Taking QEMU 10 + libvirt 11.3 from backports keeps the machine's qemu-img as it is
# (downgrading qemu-utils to 7.2 would change a tool the machine kind promises).
# Backports has priority 100, so only the packages named "pkg/bookworm-backports"
# below come from it. Everything else (busybox, python3-libvirt 9.0, which talks to
# libvirt0 11 through its stable ABI) comes from bookworm.
# libvirt-daemon ships the monolithic libvirtd (test driver built in);
# libvirt-daemon-driver-storage gives storage pools/volumes (dir pools, uploads).
# We skip libvirt-daemon-system (systemd units, polkit, default network).
BPO=bookworm-backports
BPO_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-storage
  libvirt-clients libvirt0 libvirt-common libvirt-daemon-common libvirt-daemon-log
  qemu-system-x86 qemu-system-common qemu-system-data qemu-utils seabios)
MAIN_PKGS=(python3-libvirt busybox-static cpio syslinux syslinux-common mtools dosfstools)

missing=()
for p in "${BPO_PKGS[@]}" "${MAIN_PKGS[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  if ! grep -rqs "$BPO" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding a $BPO source (/etc/apt/sources.list.d/debian-backports.sources)"
    cat >/etc/apt/sources.list.d/debian-backports.sources <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $BPO
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  targets=()
  for p in "${BPO_PKGS[@]}"; do targets+=("$p/$BPO"); done
  apt-get install -y -qq --no-install-recommends "${targets[@]}" "${MAIN_PKGS[@]}" >&2 \
    || die "apt-get install failed (see above)"
fi
for b in libvirtd virtlogd virsh qemu-system-x86_64 qemu-img busybox; do
  command -v "$b" >/dev/null || die "$b not found after install"
done

# --- /dev/kvm -----------------------------------------------------------------
# Without udev, /dev/kvm stays root:root 0600. libvirt probes QEMU as root (KVM found)
# but validates its capability cache as the libvirt-qemu user (KVM not usable), so it
# re-probes QEMU (~4 s) on every lookup: `virsh define` took 30-60 s. Apply Debian's
# udev rule by hand (group kvm, 0660; libvirt-qemu is in group kvm). Tests still use
# domain type 'qemu': guests do not boot under this machine's nested KVM.
if [[ -c /dev/kvm ]] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# --- config -------------------------------------------------------------------
mkdir -p "$RUN" "$STATE/log"
# libvirt >= 5.6: --listen is refused unless listen_tcp/listen_tls are set in the
# config; without systemd there is no socket activation, so --listen is what opens
# the TCP socket. listen_tls = 0 avoids needing certificates.
cat >"$STATE/libvirtd.conf.new" <<EOF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$PORT"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_dir = "$RUN"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
log_outputs = "3:file:$STATE/log/libvirtd.log"
EOF
mv "$STATE/libvirtd.conf.new" "$STATE/libvirtd.conf"

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
answers() { virsh -q -c "$TEST_URI" version >/dev/null 2>&1; }

# --- virtlogd (the qemu driver sends guest stdio/serial logs through it) ------
if alive "$STATE/virtlogd.pid"; then
  log "virtlogd already running (pid $(cat "$STATE/virtlogd.pid"))"
elif pgrep -x virtlogd >/dev/null; then
  log "a virtlogd not started by this script is running; reusing it"
else
  detached virtlogd -d -p "$STATE/virtlogd.pid" || die "virtlogd failed to start"
  log "started virtlogd (pid $(cat "$STATE/virtlogd.pid"))"
fi

# --- libvirtd -----------------------------------------------------------------
if alive "$STATE/libvirtd.pid"; then
  answers || die "libvirtd (pid $(cat "$STATE/libvirtd.pid")) runs but does not answer on 127.0.0.1:$PORT; run stop.sh"
  log "libvirtd already running (pid $(cat "$STATE/libvirtd.pid"))"
else
  # A privileged libvirtd owns /run/libvirt and /var/lib/libvirt: there can be only one.
  if other=$(pgrep -x libvirtd); then
    die "a libvirtd not started by this script is running (pid $other); stop it first"
  fi
  rm -f "$RUN"/libvirt-sock* "$RUN"/libvirt-admin-sock
  detached libvirtd -d --listen -f "$STATE/libvirtd.conf" -p "$STATE/libvirtd.pid" \
    || die "libvirtd failed to start; see $STATE/log/libvirtd.log"
  for _ in $(seq 100); do answers && break; sleep 0.1; done
  answers || die "libvirtd started but does not answer on 127.0.0.1:$PORT; see $STATE/log/libvirtd.log"
  log "started libvirtd (pid $(cat "$STATE/libvirtd.pid"))"
fi

cat >"$STATE/env" <<EOF
LIBVIRT_STATE_DIR=$STATE
LIBVIRT_TCP=127.0.0.1:$PORT
LIBVIRT_SOCK=$SOCK
LIBVIRT_TEST_URI=$TEST_URI
LIBVIRT_QEMU_URI=qemu+tcp://127.0.0.1:$PORT/system
LIBVIRT_TEST_UNIX_URI=test+unix:///default?socket=$SOCK
LIBVIRT_QEMU_UNIX_URI=qemu+unix:///system?socket=$SOCK
LIBVIRT_PYTHON=/usr/bin/python3
EOF
cat "$STATE/env"
