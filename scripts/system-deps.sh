#!/usr/bin/env bash
# Installs the Debian programs the tests and benchmarks drive, when any is missing.
# `make install` runs this; so does `.ci/run`, through `make install`. As root it uses
# apt-get; otherwise it prints the one command to run and stops.
set -euo pipefail

# package -> a program it provides (the check for "missing")
declare -A probe=(
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [containerd]=ctr
    [apache2-utils]=htpasswd
    [iproute2]=ip
    [aria2]=aria2c
    [mktorrent]=mktorrent
    [opentracker]=opentracker
    [tcpdump]=tcpdump
)

missing=()
for package in "${!probe[@]}"; do
    command -v "${probe[$package]}" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

IFS=$'\n' missing=($(sort <<<"${missing[*]}")); unset IFS
if [ "$(id -u)" -ne 0 ]; then
    echo "make install: these Debian packages are missing; install them, then run make install again:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
