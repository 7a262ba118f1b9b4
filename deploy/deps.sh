#!/bin/sh
# Installs the Debian packages regmesh needs. Idempotent: installs only what
# is missing, and runs apt-get update only when something is.
#   deploy/deps.sh build   - to build and run a node
#   deploy/deps.sh test    - also what the tests need (clients, upstream registry)
set -eu

build="build-essential cmake pkg-config libuv1-dev libcurl4-openssl-dev
libssl-dev libmsgpack-dev libyaml-dev libhttp-parser-dev libjansson-dev libcrypt-dev curl
ca-certificates"
test="libcmocka-dev python3 python3-pytest python3-jwt python3-cryptography python3-yaml
docker-registry skopeo containerd runc docker.io podman apache2-utils wrk
iproute2 iptables util-linux procps clang libclang-rt-14-dev serf tcpdump
containernetworking-plugins uidmap nginx-light openssl prometheus umoci"

want=$build
[ "${1:-build}" = test ] && want="$build $test"

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: missing packages:$missing (run as root to install)" >&2
  exit 1
fi
echo "deps.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps CI lean; policy-rc.d stops packages such as
# docker.io from starting machine-wide services we do not use.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends $missing
