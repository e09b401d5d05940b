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
#   LIBVIRT_TLS_PORT   TLS port on 127.0.0.1, client certificates (default 16514)
# python3-libvirt lives in Debian's /usr/bin/python3, not in a pyenv python3 on PATH:
# use $LIBVIRT_PYTHON.
set -euo pipefail

STATE=${LIBVIRT_STATE_DIR:-/tmp/hyperplane-libvirt}
PORT=${LIBVIRT_PORT:-16509}
TLS_PORT=${LIBVIRT_TLS_PORT:-16514}
PKI="$STATE/pki"
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
MAIN_PKGS=(python3-libvirt busybox-static cpio syslinux syslinux-common mtools dosfstools openssl)

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

# --- certificates for TLS -----------------------------------------------------
# A test CA and libvirtd's certificate from it (for 127.0.0.1 only); client sides in
# libvirt's pkipath layout (cacert.pem, clientcert.pem, clientkey.pem), one directory each:
#   $PKI/client          trusts the test CA; its certificate is from the test CA
#   $PKI/other-ca        trusts another CA, which did not sign libvirtd's certificate
#   $PKI/unknown-client  trusts the test CA; its certificate is from the other CA
# Made once; kept while they are all there.
new_ca() { # dir
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=hyperplane test CA $(basename "$1")" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$1/cakey.pem" -out "$1/cacert.pem" 2>/dev/null
}
issue() { # ca-dir out-dir file-prefix extended-key-usage [subjectAltName]
  local ca=$1 out=$2 prefix=$3 usage=$4 san=${5:-}
  mkdir -p "$out"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$out/$prefix.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=hyperplane $prefix" \
    -keyout "$out/${prefix}key.pem" -out "$out/$prefix.csr" 2>/dev/null &&
    openssl x509 -req -in "$out/$prefix.csr" -CA "$ca/cacert.pem" -CAkey "$ca/cakey.pem" -CAcreateserial \
      -days 3650 -extfile "$out/$prefix.ext" -out "$out/${prefix}cert.pem" 2>/dev/null
  local status=$?
  rm -f "$out/$prefix.csr" "$out/$prefix.ext"
  return $status
}
pki_files=("$PKI/server/servercert.pem" "$PKI/client/clientkey.pem" "$PKI/other-ca/clientkey.pem"
  "$PKI/unknown-client/clientkey.pem")
restart_reason=""
if ! ls "${pki_files[@]}" >/dev/null 2>&1; then
  log "making test certificates in $PKI"
  restart_reason="its certificates were made again"
  rm -rf "$PKI"
  { new_ca "$PKI/ca" && new_ca "$PKI/another-ca" &&
    issue "$PKI/ca" "$PKI/server" server serverAuth IP:127.0.0.1 &&
    issue "$PKI/ca" "$PKI/client" client clientAuth &&
    issue "$PKI/another-ca" "$PKI/other-ca" client clientAuth &&
    issue "$PKI/another-ca" "$PKI/unknown-client" client clientAuth &&
    cp "$PKI/ca/cacert.pem" "$PKI/client/" &&
    cp "$PKI/another-ca/cacert.pem" "$PKI/other-ca/" &&
    cp "$PKI/ca/cacert.pem" "$PKI/unknown-client/"; } || die "openssl could not make the test certificates"
fi

# --- config -------------------------------------------------------------------
mkdir -p "$RUN" "$STATE/log"
# libvirt >= 5.6: --listen is refused unless listen_tcp/listen_tls are set in the
# config; without systemd there is no socket activation, so --listen is what opens
# the TCP and TLS sockets.
cat >"$STATE/libvirtd.conf.new" <<EOF
listen_tls = 1
tls_port = "$TLS_PORT"
key_file = "$PKI/server/serverkey.pem"
cert_file = "$PKI/server/servercert.pem"
ca_file = "$PKI/ca/cacert.pem"
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

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
answers() { virsh -q -c "$TEST_URI" version >/dev/null 2>&1; }

# A libvirtd started with another config (an older version of this script) or other
# certificates is restarted.
cmp -s "$STATE/libvirtd.conf.new" "$STATE/libvirtd.conf" || restart_reason="libvirtd.conf changed"
if alive "$STATE/libvirtd.pid" && [[ -n $restart_reason ]]; then
  pid=$(cat "$STATE/libvirtd.pid")
  log "$restart_reason: stopping libvirtd (pid $pid) to start it again"
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$pid" 2>/dev/null || die "libvirtd (pid $pid) did not stop within 10 s"
  rm -f "$STATE/libvirtd.pid"
fi
mv "$STATE/libvirtd.conf.new" "$STATE/libvirtd.conf"

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
LIBVIRT_TLS=127.0.0.1:$TLS_PORT
LIBVIRT_PKI=$PKI
LIBVIRT_SOCK=$SOCK
LIBVIRT_TEST_URI=$TEST_URI
LIBVIRT_QEMU_URI=qemu+tcp://127.0.0.1:$PORT/system
LIBVIRT_TEST_UNIX_URI=test+unix:///default?socket=$SOCK
LIBVIRT_QEMU_UNIX_URI=qemu+unix:///system?socket=$SOCK
LIBVIRT_PYTHON=/usr/bin/python3
EOF
cat "$STATE/env"
