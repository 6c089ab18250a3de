#!/usr/bin/env bash
# System packages the test suite drives for real: Prometheus (the Prometheus-in analysis test
# starts its own server on loopback), Chromium + ChromeDriver (the dashboard's browser test) and
# bubblewrap (the sandbox's fallback when Landlock is missing), wrk (benchmarks/faults.py's
# 1,000-connection load, smoke-run by the tests) and HAProxy (the `router: {kind: haproxy}` data
# plane, driven through its Runtime API; socat-free: shipyard speaks to the admin socket itself),
# openssh-server + iproute2 (the fleet tests' hosts: network namespaces on a bridge, each running
# its own sshd; no system sshd is wanted, so none is started by the install and none is left on :22).
# Installed from Debian's packages when missing; needs root (or sudo).
set -euo pipefail

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v bwrap >/dev/null || missing+=(bubblewrap)
[ -x /usr/bin/wrk ] || missing+=(wrk)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing+=(iproute2)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "error: the tests need ${missing[*]} (Debian packages) and this user cannot install them" >&2
  echo "  hint: as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} (Debian packages the tests drive)..." >&2
# Debian's policy-rc.d convention: exit 101 = "do not start services" (openssh-server's postinst
# would otherwise start a system sshd on :22); only ours is removed afterwards.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
