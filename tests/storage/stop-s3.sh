#!/usr/bin/env bash
# Stops the SeaweedFS server tests/storage/setup-s3.sh started (by its pid file). With --purge,
# also removes its data directory.
set -euo pipefail

STATE_DIR="${HYPERPLANE_S3_DIR:-/tmp/hyperplane-s3}"
PID_FILE="$STATE_DIR/weed.pid"

if [ -f "$PID_FILE" ]; then
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop-s3: pid $pid did not stop in 10 s; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "stop-s3: stopped pid $pid" >&2
    else
        echo "stop-s3: pid $pid is not running" >&2
    fi
    rm -f "$PID_FILE"
else
    echo "stop-s3: no server recorded in $PID_FILE" >&2
fi

if [ "${1:-}" = "--purge" ]; then
    rm -rf "$STATE_DIR"
    echo "stop-s3: removed $STATE_DIR" >&2
fi
