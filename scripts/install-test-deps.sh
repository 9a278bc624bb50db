#!/usr/bin/env bash
# Installs the system tools the test suite drives for real: tor (private Tor test network),
# Dovecot (Maildir interop), swaks (SMTP client). Called by `npm test`; does nothing when
# they are already there. Never lets the packages' own services start: a default tor reaches
# for the public Tor network.
set -euo pipefail

need=()
command -v tor >/dev/null 2>&1 || need+=(tor)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
{ command -v dovecot >/dev/null 2>&1 && command -v doveadm >/dev/null 2>&1; } || need+=(dovecot-imapd)
[ ${#need[@]} -eq 0 ] && exit 0

echo "install-test-deps: missing ${need[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get here; install these with your package manager, then run the tests again: ${need[*]}" >&2
  echo "  (FreeBSD/HardenedBSD: pkg install tor dovecot swaks)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-test-deps: need root to apt-get install ${need[*]}; run as root or install them yourself" >&2
    exit 1
  fi
fi

# Keep package services from starting during the install (Debian's policy-rc.d protocol).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  made_policy=1
fi
cleanup() { [ "$made_policy" -eq 1 ] && $sudo rm -f "$policy"; return 0; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# On a systemd host, make sure the services stay off (they were never started above).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for unit in tor tor@default dovecot; do
    $sudo systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi
echo "install-test-deps: installed ${need[*]}" >&2
