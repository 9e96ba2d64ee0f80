#!/usr/bin/env bash
# System tools the test suite uses, installed when missing: Prometheus and promtool (Debian's
# `prometheus` package) for the alert-rule and scrape tests; podman, runc, debootstrap and CNI's
# dnsname plugin (service names resolve between containers) for tests/container; and kustomize
# when kubectl is absent (the k8s render tests). Idempotent: a machine that has them installs
# nothing.
set -euo pipefail

packages=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || packages+=(prometheus)
command -v podman >/dev/null || packages+=(podman)
command -v runc >/dev/null || packages+=(runc)
command -v debootstrap >/dev/null || packages+=(debootstrap)
[ -x /usr/lib/cni/dnsname ] || packages+=(golang-github-containernetworking-plugin-dnsname)

if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "the tests need ${packages[*]}: sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 1
  fi
  echo "installing Debian's ${packages[*]} for the tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  if ! command -v go >/dev/null; then
    echo "the k8s tests need kubectl or kustomize (or Go, to build kustomize)" >&2
    exit 1
  fi
  echo "building kustomize with Go for the k8s render tests"
  GOBIN="${GOBIN:-/usr/local/bin}" go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
fi
