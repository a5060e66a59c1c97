#!/usr/bin/env bash
# Build every image of docker/compose.yaml with podman, from one Debian 12 base made here
# with mmdebstrap (no registry needed: only Debian's mirror for the base and the packages,
# and PyPI for the bridge's dependencies). On a clean Debian 12 machine, as root:
#   bash docker/build-images.sh
# Installs podman, runc and mmdebstrap if missing and configures podman for this kind of
# host (runc, cgroupfs; crun fails on hybrid cgroups). Prints how long each step took.
# Environment: BASE_IMAGE (default localhost/bridge-base:bookworm); REBUILD_BASE=1 to make
# the base again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
BASE_IMAGE="${BASE_IMAGE:-localhost/bridge-base:bookworm}"

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
elapsed() { echo "$(( $(date +%s) - $1 ))"; }

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
# The compose network's DNS (service names) comes from netavark's aardvark-dns.
for pkg in netavark aardvark-dns; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    step "apt-get install ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -qs '^runtime = "runc"' "$conf"; then
    step "configure podman ($conf)"
    if [ -s "$conf" ]; then
        echo "error: $conf exists and does not select runc; add these settings to it:" >&2
        cat "docker/containers.conf" >&2
        exit 1
    fi
    mkdir -p /etc/containers
    cp docker/containers.conf "$conf"
fi

if ! podman image exists "$BASE_IMAGE" || [ "${REBUILD_BASE:-0}" = 1 ]; then
    step "base image $BASE_IMAGE (mmdebstrap)"
    t0=$(date +%s)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # The host's own extra CAs (a TLS-inspecting proxy's) go into the base, so that apt
    # and pip inside the builds trust what this host trusts.
    mmdebstrap --quiet --variant=apt --include=ca-certificates \
        --customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share' \
        --customize-hook='chroot "$1" update-ca-certificates' \
        --customize-hook='chroot "$1" apt-get clean' \
        bookworm "$work/rootfs.tar" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main"
    podman import --quiet --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    echo "base image built in $(elapsed "$t0") s"
fi

# --format docker keeps the images' HEALTHCHECKs (the OCI format has none).
build() {
    local tag=$1 file=$2 t0
    step "image $tag ($file)"
    t0=$(date +%s)
    podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f "$file" -t "$tag" . >/dev/null
    echo "$tag built in $(elapsed "$t0") s"
}
build localhost/provisioning-bridge-postgres:latest docker/postgres.Dockerfile
build localhost/provisioning-bridge-mosquitto:latest docker/mosquitto.Dockerfile
build localhost/provisioning-bridge:latest docker/Dockerfile
