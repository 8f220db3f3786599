#!/usr/bin/env bash
# Prepare a fresh machine for sandnet: the Debian tools the demo and tests
# drive (iproute2, ping, curl, dnsmasq-base as the peer's DNS server,
# docker-compose for `make compose-check`, ethtool to turn off offloads around the
# TCP impairment relay), a virtual environment, and the project
# installed into it in editable mode with its development dependencies.
set -euo pipefail

venv=${1:-.venv}
debs=(iproute2 iputils-ping curl dnsmasq-base docker-compose ethtool)

missing=()
for pkg in "${debs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Without recommends, docker-compose does not pull in the Docker engine.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating virtual environment in $venv"
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
