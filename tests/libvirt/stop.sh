#!/usr/bin/env bash
# Stop the libvirtd and virtlogd that setup.sh started (found by their pid files).
# Guests still running are listed: their QEMU processes outlive libvirtd.
set -euo pipefail

STATE=${LIBVIRT_STATE_DIR:-/tmp/hyperplane-libvirt}
log() { printf 'stop: %s\n' "$*" >&2; }

if [[ -s $STATE/env ]]; then
  # shellcheck disable=SC1091
  . "$STATE/env"
  running=$(virsh -q -c "$LIBVIRT_QEMU_URI" list --name 2>/dev/null | sed '/^$/d' || true)
  [[ -z $running ]] || log "WARNING: guests still running (destroy them first): $running"
fi

stop() { # name pidfile
  local pid
  if [[ -s $2 ]] && pid=$(cat "$2") && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; log "$1 (pid $pid) killed"; else log "$1 (pid $pid) stopped"; fi
  else
    log "$1 not running (no live pid in $2)"
  fi
  rm -f "$2"
}
stop libvirtd "$STATE/libvirtd.pid"
stop virtlogd "$STATE/virtlogd.pid"
