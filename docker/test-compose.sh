#!/usr/bin/env bash
# The compose file, run for real with podman and podman-compose (CI: `.ci/run`; by hand, as
# root on Debian 12: `bash docker/test-compose.sh`). Builds the images (docker/build-images.sh),
# brings the stack up with 3 bridges, then from the host, through the published TLS port and
# with the repository's reference client (`bridge activate`):
#   - an approved, claimed device activates (sealed: the key comes back encrypted to the
#     device), and its own broker login (dynamic security) works, a wrong password does not;
#   - an identifier that is not approved is refused (not_approved);
#   - a client without a login cannot join the bridges' share group;
#   - the runtime database role cannot drop, disable or truncate the audit trail;
#   - one bridge container is killed (SIGKILL) and the two others answer every request.
# Everything is torn down at the end, also on failure (containers, network, volumes).
# Any failure exits non-zero with the containers' logs; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
PROJECT=bridgetest$$
COMPOSE_FILE=docker/compose.yaml
PY=.venv/bin/python   # the repository's venv (`.ci/run` makes it): reference client, certs

[ -x "$PY" ] || { echo "FAIL: $PY is missing; run .ci/run (or make the venv) first" >&2; exit 1; }
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - T0 ))"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

t=$(date +%s)
bash docker/build-images.sh
BUILD_SECONDS=$(( $(date +%s) - t ))

if ! "$PY" -m podman_compose version >/dev/null 2>&1; then
    step "pip install podman-compose"
    "$PY" -m pip install -q 'podman-compose>=1.3'
fi
compose() { "$PY" -m podman_compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
bridges() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=bridge" --format '{{.Names}}' | sort; }

WORK=$(mktemp -d)
teardown() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "---- container logs (failure, exit $rc) ----" >&2
        for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            echo "---- $c ($(podman inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c"))" >&2
            podman logs --tail 40 "$c" >&2 2>&1 || true
        done
    fi
    step "tear down"
    compose down -v -t 5 >/dev/null 2>&1 || true
    # Whatever `down` left (a killed container, the network, the volumes).
    podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f >/dev/null 2>&1 || true
    podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    echo "compose test: exit $rc; images ${BUILD_SECONDS:-?} s, total $(( $(date +%s) - T0 )) s"
    exit "$rc"
}
trap teardown EXIT
# timeout(1) sends TERM: exit through the teardown above.
trap 'exit 143' TERM INT

# Secrets only in the environment (never on a command line): hex, as env.example says.
hex() { "$PY" -c 'import secrets; print(secrets.token_hex(24))'; }
export BRIDGE_SECRET BRIDGE_DB_OWNER_PASSWORD BRIDGE_DB_PASSWORD BRIDGE_BROKER_PASSWORD \
    BRIDGE_BROKER_ADMIN_PASSWORD BRIDGE_TLS_DIR BRIDGE_MQTTS_PORT BRIDGE_REPLICAS=3
BRIDGE_SECRET=$(hex); BRIDGE_DB_OWNER_PASSWORD=$(hex); BRIDGE_DB_PASSWORD=$(hex)
BRIDGE_BROKER_PASSWORD=$(hex); BRIDGE_BROKER_ADMIN_PASSWORD=$(hex)
BRIDGE_MQTTS_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

step "certificates (tests/certs.py) in $WORK/tls"
BRIDGE_TLS_DIR="$WORK/tls"
"$PY" -c 'import sys; from pathlib import Path; from tests.certs import make_tls_files; make_tls_files(Path(sys.argv[1]))' "$BRIDGE_TLS_DIR"
chmod 0755 "$WORK" "$BRIDGE_TLS_DIR"
chown 10002:10002 "$BRIDGE_TLS_DIR/server.key"   # the broker's uid (docker/mosquitto.Dockerfile)
chmod 0600 "$BRIDGE_TLS_DIR/server.key"
CA="$BRIDGE_TLS_DIR/ca.crt"

step "podman-compose up -d (3 bridges)"
t=$(date +%s)
# Two steps, as the README says for podman-compose: podman 4.3 restarts an exited
# one-shot named in --requires and cannot start a container whose dependency has its own
# (Docker Compose starts the whole file with one `up`).
compose up -d postgres broker-init migrate >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log" >&2; fail "podman-compose up (one-shots) failed"; }
for one in migrate broker-init; do
    c="${PROJECT}_${one}_1"
    podman wait "$c" >/dev/null
    code=$(podman inspect -f '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] || fail "the $one one-shot exited with $code"
    echo "$one: $(podman logs "$c" 2>&1 | tail -1)"
done
compose up -d --no-deps mosquitto bridge >>"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log" >&2; fail "podman-compose up (broker, bridges) failed"; }
mapfile -t BRIDGES < <(bridges)
[ "${#BRIDGES[@]}" = 3 ] || fail "expected 3 bridge containers, found ${#BRIDGES[@]}: ${BRIDGES[*]}"
# podman 4.3 runs no health checks without systemd: ask each bridge's /readyz directly.
for c in "${BRIDGES[@]}"; do
    for _ in $(seq 90); do
        podman exec "$c" bridge check >/dev/null 2>&1 && break
        sleep 1
    done
    podman exec "$c" bridge check >/dev/null || fail "bridge $c is not ready after 90 s"
done
ids=$(for c in "${BRIDGES[@]}"; do podman exec "$c" hostname; done | sort -u | wc -l)
[ "$ids" = 3 ] || fail "the 3 bridges do not have 3 distinct hostnames (client ids)"
echo "stack up and 3 bridges ready in $(( $(date +%s) - t )) s"

step "database roles"
DB="${PROJECT}_postgres_1"
export PGPASSWORD="$BRIDGE_DB_PASSWORD"   # handed to psql through `podman exec -e PGPASSWORD`
as_runtime() { podman exec -e PGPASSWORD "$DB" psql -h 127.0.0.1 -U bridge -d bridge -v ON_ERROR_STOP=1 -qAt -c "$1" 2>&1; }
[ "$(as_runtime "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = current_user")" = f ] \
    || fail "the runtime role has superuser, createrole or createdb"
for attack in "DROP TRIGGER audit_log_append_only ON audit_log" \
              "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only" \
              "TRUNCATE audit_log" \
              "SET session_replication_role = replica"; do
    if out=$(as_runtime "$attack"); then
        fail "the runtime role could run: $attack"
    fi
    echo "attack refused (runtime role): $attack -> ${out##*ERROR:  }"
done
unset PGPASSWORD

step "a model, approved and claimed devices (admin commands in a bridge container)"
# The bridge's own runtime role is enough for the admin commands; the owner role only migrates.
admin() { podman exec "${BRIDGES[1]}" bridge "$@"; }
admin model add acme thermo-1 --kind serial
admin approve acme thermo-1 $(seq -f "SN-%g" 1001 1013)
for n in $(seq 1001 1013); do admin claim acme thermo-1 "SN-$n" --owner alice >/dev/null; done
echo "claimed SN-1001..SN-1013 for alice"
# Answers per bridge, from its own /metrics (bridge_activations_total, every outcome).
answers() { podman exec "$1" python3 -c 'import urllib.request as u
t = u.urlopen("http://127.0.0.1:9108/metrics").read().decode()
print(int(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith("bridge_activations_total{"))))'; }

step "activations from the host through mqtts://127.0.0.1:$BRIDGE_MQTTS_PORT"
activate() {  # identifier client-id [extra flags]; prints the reply as JSON
    local id=$1 cid=$2; shift 2
    env -u BRIDGE_DATABASE_URL "$PY" -m bridge activate --mqtt-url "mqtts://127.0.0.1:$BRIDGE_MQTTS_PORT" \
        --mqtt-ca-file "$CA" --vendor acme --model thermo-1 --identifier "$id" --client-id "$cid" \
        --timeout 10 --json "$@"
}
field() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read()).get(sys.argv[1], ""))' "$1"; }

reply=$(activate SN-1001 dev-1001 --seal) || fail "the sealed activation of SN-1001 failed: $reply"
[ "$(field status <<<"$reply")" = ok ] || fail "SN-1001: $reply"
[ -n "$(field sealed_key <<<"$reply")" ] || fail "SN-1001: the reply carried no sealed_key: $reply"
key=$(field key <<<"$reply")
echo "ok (sealed): SN-1001 got a key encrypted to its public key, unsealed by the client"
"$PY" -m tests.deploy.compose_checks login 127.0.0.1 "$BRIDGE_MQTTS_PORT" "$CA" dev-1001 <<<"$key"

if reply=$(activate SN-9999 dev-9999 --seal); then fail "an unapproved identifier was activated: $reply"; fi
[ "$(field code <<<"$reply")" = not_approved ] || fail "SN-9999: expected not_approved, got $reply"
echo "refusal: SN-9999 -> not_approved: $(field message <<<"$reply")"

"$PY" -m tests.deploy.compose_checks anonymous-share 127.0.0.1 "$BRIDGE_MQTTS_PORT" "$CA"

step "kill one bridge (SIGKILL); the two others answer every request"
victim="${BRIDGES[0]}"
podman kill -s KILL "$victim" >/dev/null
sleep 1
[ "$(podman inspect -f '{{.State.Running}}' "$victim")" = false ] || fail "$victim is still running"
before1=$(answers "${BRIDGES[1]}"); before2=$(answers "${BRIDGES[2]}")
t=$(date +%s)
answered=0
for n in $(seq 1002 1013); do
    reply=$(activate "SN-$n" "dev-$n" --seal) || fail "SN-$n after the kill: ${reply:-no reply (timeout)}"
    [ "$(field status <<<"$reply")" = ok ] || fail "SN-$n after the kill: $reply"
    answered=$((answered + 1))
done
[ "$(podman inspect -f '{{.State.Running}}' "$victim")" = false ] || fail "$victim came back during the test"
echo "with $victim dead: $answered of 12 activations answered ok in $(( $(date +%s) - t )) s"
by1=$(( $(answers "${BRIDGES[1]}") - before1 )); by2=$(( $(answers "${BRIDGES[2]}") - before2 ))
echo "answered by ${BRIDGES[1]}: $by1, by ${BRIDGES[2]}: $by2"
[ $((by1 + by2)) = 12 ] || fail "the surviving bridges answered $((by1 + by2)) requests, not 12"
[ "$by1" -gt 0 ] && [ "$by2" -gt 0 ] || fail "one surviving bridge answered every request: no share group"

step "compose test passed"
