#!/usr/bin/env bash
# Installs the outside tools the tests and benchmarks use (Debian packages)
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(skopeo umoci openssh-server openssh-client pv zstd bzip2 xz-utils curl iproute2 procps tar gzip time bc jq bsdutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "warning: the Docker Engine is not reachable; tests that need it will skip (or fail under CI=true)" >&2
fi


