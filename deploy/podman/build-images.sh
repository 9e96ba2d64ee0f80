#!/usr/bin/env bash
# What the compose stack needs from an image registry, made with podman on a machine that
# reaches Debian's packages and PyPI but no registry:
#
#   localhost/streams-debian:bookworm-<id>   `debootstrap --variant=minbase bookworm`, imported
#   localhost/streams-python:3.11-bookworm   + Debian's python3 (3.11): deploy/Dockerfile's BASE
#   localhost/streams-kafka:<version>        + Debian's Java 17 and the local broker's Kafka jars
#   localhost/streams-prometheus:bookworm    + Debian's prometheus package
#   localhost/streams-registry:<version>     + Debian's Java 17 and the local registry's server
#   <cache>/wheelhouse/                      every wheel deploy/Dockerfile installs, for that base
#
# <cache> is STREAMS_CACHE_DIR, else .cache in the checkout. It keeps the Debian root file
# system (a tarball) and the wheelhouse; podman's store keeps the images. A second run reuses
# both and takes seconds. Progress goes to stderr; stdout gets the variables the compose stack
# and the image build read, as `export NAME=value` lines:
#
#   eval "$(deploy/podman/build-images.sh)"
#
# Needs root (debootstrap), podman, debootstrap, and a Python with pip and the streams package
# (PYTHON, default .venv/bin/python: `make install`); the first run also Maven and Java: the
# Kafka jars and the registry's server come from Maven Central into <cache>, as for the local
# broker and `streams registry start`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${STREAMS_CACHE_DIR:-$repo/.cache}
python=${PYTHON:-$repo/.venv/bin/python}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/deploy/podman/containers.conf}

# Bookworm's python3 is 3.11 and its C library glibc 2.36: the wheels must fit both.
suite=bookworm
python_version=3.11
glibc_minor=36

python_image=localhost/streams-python:$python_version-$suite
prometheus_image=localhost/streams-prometheus:$suite

fail() {
  echo "build-images: $*" >&2
  exit 1
}

step() {
  echo "build-images: $*" >&2
}

command -v podman >/dev/null ||
  fail "podman not found: apt-get install podman runc (deploy/tools/test-tools.sh installs it)"
[ -x "$python" ] || fail "no Python at $python: run \`make install\`, or set PYTHON"

debian_base() {
  if podman image exists "$debian_image"; then
    return
  fi
  local tarball=$cache/podman/debian-$suite-minbase-$recipe.tar
  if [ ! -s "$tarball" ]; then
    [ "$(id -u)" -eq 0 ] || fail "debootstrap needs root: run as root, or sudo"
    command -v debootstrap >/dev/null ||
      fail "debootstrap not found: apt-get install debootstrap"
    step "debootstrap $suite (minbase) from $mirror into $tarball"
    mkdir -p "$cache/podman"
    local root
    root=$(mktemp -d "$cache/podman/rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is local to this function
    trap "rm -rf '$root'" EXIT
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
      fail "debootstrap failed (is $mirror reachable?); its log: $root.log"
    # As Docker's debian images are made: package installs start no services and leave no
    # package caches, manuals or translations behind, and every image built on this one gets
    # Debian's updates and security fixes.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    local clean='rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true'
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<EOF
DPkg::Post-Invoke { "$clean"; };
APT::Update::Post-Invoke { "$clean"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
    printf 'path-exclude %s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' \
      '/usr/share/locale/*' >"$root/etc/dpkg/dpkg.cfg.d/docker"
    printf 'path-include /usr/share/doc/*/copyright\n' >>"$root/etc/dpkg/dpkg.cfg.d/docker"
    cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
EOF
    # Files only: Java's post-install script links its manual into /usr/share/man/man1.
    find "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
      "$root/usr/share/locale" -type f -not -name copyright -delete
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$root" "$root.log"
    trap - EXIT
  fi
  step "importing $tarball as $debian_image"
  podman import --quiet "$tarball" "$debian_image" >/dev/null
}

# Every wheel of the image's dependencies for the base's platform and Python, whatever the
# host runs, plus hatchling (the build backend deploy/Dockerfile's build stage needs).
wheelhouse() {
  local dir=$cache/wheelhouse arch
  arch=$(uname -m)
  local stamp
  stamp=$(cat "$repo/constraints.txt" "$repo/pyproject.toml" | sha256sum | cut -c1-16)
  stamp="$stamp cp${python_version/./} manylinux_2_${glibc_minor}_$arch"
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  step "wheelhouse for CPython $python_version, glibc 2.$glibc_minor, $arch into $dir"
  mkdir -p "$cache"
  local staging project
  staging=$(mktemp -d "$cache/wheelhouse.XXXXXX")
  # pip targets a foreign platform only with wheels, so the project goes in as a wheel too.
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$staging/project" "$repo" >&2 ||
    fail "could not build the streams wheel (see pip's message above)"
  project=$(echo "$staging"/project/streams-*.whl)
  local platforms=()
  for minor in $(seq "$glibc_minor" -1 17); do
    platforms+=(--platform "manylinux_2_${minor}_$arch")
  done
  platforms+=(--platform "manylinux2014_$arch")
  "$python" -m pip download --quiet --disable-pip-version-check --dest "$staging/wheels" \
    --constraint "$repo/constraints.txt" --only-binary=:all: "${platforms[@]}" \
    --python-version "$python_version" --implementation cp --abi "cp${python_version/./}" \
    "${project}[rocksdb]" hatchling >&2 ||
    fail "pip could not download the wheelhouse (is PyPI reachable?)"
  rm -f "$staging"/wheels/streams-*.whl
  echo "$stamp" >"$staging/wheels/.stamp"
  rm -rf "$dir"
  mv "$staging/wheels" "$dir"
  rm -rf "$staging"
}

image_id() {
  podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true
}

# A rebuild that changes an image removes the one it replaces, so repeated runs (CI's) do not
# pile up untagged images; one still used by a container stays.
build() {
  local image=$1
  shift
  step "podman build $image"
  local log old
  log=$(mktemp)
  old=$(image_id "$image")
  if ! podman build --network host --build-arg "BASE=$debian_image" --tag "$image" "$@" \
    >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    fail "podman build of $image failed (its output above)"
  fi
  rm -f "$log"
  if [ -n "$old" ] && [ "$(image_id "$image")" != "$old" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}

# The base is named after the recipe above: a change to it makes a new one, never a stale hit.
recipe=$(declare -f debian_base | sha256sum | cut -c1-12)
debian_image=localhost/streams-debian:$suite-$recipe

debian_base
wheelhouse

# "VERSION PATH" of a server built from Maven Central and cached under .cache/ (as the
# tests use it): module, its version constant, the function that builds it, its error.
built() {
  "$python" -c "
import sys
from $1 import $2, $3
from streams.errors import $4
try:
    print($2, $3())
except $4 as exc:
    sys.exit(f'build-images: {exc}')
"
}

kafka=$(built streams.broker.local KAFKA_VERSION fetch_jars BrokerError) || exit 1
read -r kafka_version kafka_libs <<<"$kafka"
kafka_image=localhost/streams-kafka:$kafka_version

registry=$(built streams.broker.registry REGISTRY_VERSION ensure_registry_built \
  RegistryServerError) || exit 1
read -r registry_version registry_server <<<"$registry"
registry_image=localhost/streams-registry:$registry_version

build "$python_image" "$repo/deploy/podman/python"
build "$kafka_image" --build-context "kafka-libs=$kafka_libs" \
  --build-context "kafka-config=$repo/deploy/kafka" "$repo/deploy/podman/kafka"
build "$prometheus_image" "$repo/deploy/podman/prometheus"
build "$registry_image" --build-context "registry-server=$registry_server" \
  "$repo/deploy/podman/registry"

cat <<EOF
export CONTAINERS_CONF=$CONTAINERS_CONF
export PYTHON_BASE_IMAGE=$python_image
export WHEELHOUSE=$cache/wheelhouse
export KAFKA_IMAGE=$kafka_image
export PROMETHEUS_IMAGE=$prometheus_image
export REGISTRY_IMAGE=$registry_image
EOF
