#!/usr/bin/env bash
# Print the base image to build facerec's images on (the PYTHON_IMAGE build argument).
#
# The Dockerfiles pin an official image (ARG PYTHON_IMAGE=python:3.11.x-slim-bookworm). It is
# used when it is in the engine's image store or a registry gives it to `docker pull`. Where
# no registry answers (air-gapped machines, CI sandboxes), this script builds a stand-in from
# Debian packages instead and prints its name:
#   - Debian bookworm (debootstrap --variant=minbase, with bookworm-updates and -security),
#     apt and passwd (useradd) as in debian:bookworm-slim, docs/man/locales removed;
#   - Python 3.11 from Debian (python3.11, python3.11-venv): the same minor version as the
#     pinned image, with the same commands: /usr/local/bin/python, python3 and python3.11
#     (links to /usr/bin/python3.11; the official image builds CPython into /usr/local),
#     so `python -m venv` makes the same /opt/venv with bin/python -> /usr/local/bin/python;
#   - the CA certificates of the machine that builds it (its bundle replaces Debian's, and
#     /etc/pip.conf points pip at it), so pip in the build stage works behind a
#     TLS-inspecting proxy;
#   - ENV PATH and LANG=C.UTF-8 and CMD ["python3"], as the official image.
# The stand-in is rebuilt only when this script or the CA bundle changes (label
# facerec.standin.recipe). FACEREC_BASE=standin skips the registry; FACEREC_BASE=<image>
# uses that image as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=$(scripts/docker-engine.sh client)
PINNED=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile.worker)
STANDIN=facerec-python-standin:3.11-slim-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
say() { echo "base image: $*" >&2; }

case "${FACEREC_BASE:-}" in
    "" | standin) ;;
    *) echo "$FACEREC_BASE"; exit 0 ;;
esac

if [ "${FACEREC_BASE:-}" != standin ]; then
    if "$DOCKER" image inspect "$PINNED" >/dev/null 2>&1; then
        say "$PINNED (in the image store)"; echo "$PINNED"; exit 0
    fi
    if timeout 300 "$DOCKER" pull -q "$PINNED" >&2; then
        say "$PINNED (pulled)"; echo "$PINNED"; exit 0
    fi
    say "$PINNED cannot be pulled: using a stand-in built from Debian packages"
fi

recipe=$(cat "$0" "$CA_BUNDLE" | sha256sum | cut -c1-16)
if [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "facerec.standin.recipe"}}' \
        "$STANDIN" 2>/dev/null)" = "$recipe" ]; then
    say "$STANDIN (built before from this recipe)"; echo "$STANDIN"; exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing debootstrap with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            debootstrap >&2
    else
        echo "building the stand-in base image needs debootstrap (apt-get install debootstrap)" >&2
        exit 1
    fi
fi
[ "$(id -u)" -eq 0 ] || { echo "debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d /var/tmp/facerec-standin.XXXXXX)
cleanup() {
    mountpoint -q "$root/proc" && umount "$root/proc"
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT
say "building $STANDIN with debootstrap (a few minutes)"
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >&2
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
# What debian:bookworm-slim leaves out of every package installed later.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
chroot "$root" /bin/sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get dist-upgrade -y -qq
    apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv ca-certificates
    ln -s /usr/bin/python3.11 /usr/local/bin/python3.11
    ln -s python3.11 /usr/local/bin/python3
    ln -s python3.11 /usr/local/bin/python
    apt-get clean
' >&2
umount "$root/proc"
cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
: >"$root/etc/resolv.conf"   # the engine provides its own
# Files a slim image does not carry: docs of the packages debootstrap unpacked, apt's
# lists and caches, logs.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/man" "$root/usr/share/info" -mindepth 1 -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
version=$(chroot "$root" /usr/local/bin/python -c 'import platform; print(platform.python_version())')
tar --numeric-owner --xattrs -C "$root" -c . | "$DOCKER" import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PYTHON_VERSION=$version" \
    --change "LABEL facerec.standin.recipe=$recipe" \
    --change "LABEL facerec.standin.for=$PINNED" \
    --change 'CMD ["python3"]' \
    --message "stand-in for $PINNED: Debian bookworm + Python $version (scripts/base-image.sh)" \
    - "$STANDIN" >&2
say "$STANDIN built (Python $version)"
echo "$STANDIN"
