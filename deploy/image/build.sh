#!/bin/sh
# Builds the regmesh OCI image from this machine's Debian packages, offline.
#
#   sh deploy/image/build.sh BINARY OUT [TAG]     (make image does this)
#
# OUT becomes an OCI image layout (push it with
# `skopeo copy oci:OUT:TAG docker://REGISTRY/regmesh:TAG`). The root file
# system is the binary, stripped, plus the files of exactly the Debian
# packages that hold its shared libraries and ca-certificates, copied from
# their installed files (`dpkg -L`) at the versions this machine has: no
# download, no shell, no package manager in the image, and
# /var/lib/dpkg/status.d/ lists each package so scanners know what is in it.
# It runs as uid 65532 with the cache in the volume /var/cache/regmesh and
# the config at /etc/regmesh/regmesh.yml (deploy/regmesh.yml; mount your
# own). Needs umoci (Debian package umoci); as non-root, umoci runs
# --rootless and the files are owned by root in the image either way.
set -eu

[ $# -ge 2 ] || { echo "usage: $0 BINARY OUT [TAG]" >&2; exit 2; }
bin=$1
out=$2
tag=${3:-latest}
here=$(cd "$(dirname "$0")/.." && pwd)
command -v umoci >/dev/null || { echo "$0: umoci not found (apt-get install umoci)" >&2; exit 1; }
[ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"

# The packages owning each shared library the binary loads (and the loader).
# With merged /usr the loader may name /lib/... while dpkg knows /usr/lib/...
# or the other way round, so each spelling is tried.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
pkgs=$(for l in $libs; do
  for c in "$l" "$(readlink -f "$l")" "/usr$l" "${l#/usr}"; do
    dpkg -S "$c" 2>/dev/null && break
  done || { echo "$0: no package owns $l" >&2; exit 1; }
done | cut -d: -f1 | sort -u)
pkgs="$pkgs ca-certificates"

# Their files, without documentation (copyright files stay: the licences).
for p in $pkgs; do
  dpkg -L "$p" | while read -r f; do
    case $f in
      /usr/share/doc/*/copyright) ;;
      /usr/share/doc/*|/usr/share/man/*|/usr/share/info/*|/usr/share/lintian/*|/usr/share/locale/*) continue ;;
    esac
    # directories (and, with merged /usr, the /lib -> usr/lib links) come
    # with the files inside them
    [ -d "$f" ] && continue
    [ -f "$f" ] || [ -L "$f" ] && printf '%s\n' "${f#/}"
  done
done | sort -u > "$work/files"
tar -C / --no-recursion -cf - -T "$work/files" | tar -C "$root" -xf -

mkdir -p "$root/var/lib/dpkg/status.d"
for p in $pkgs; do
  dpkg-query -s "$p" > "$root/var/lib/dpkg/status.d/$p"
done

# What the packages' maintainer scripts would have made.
mkdir -p "$root/etc/ssl/certs"
cat "$root"/usr/share/ca-certificates/*/*.crt > "$root/etc/ssl/certs/ca-certificates.crt"
echo "include /etc/ld.so.conf.d/*.conf" > "$root/etc/ld.so.conf"
ldconfig -r "$root" 2>/dev/null || true

# The rest of a minimal system: users, name resolution, /tmp, the cache.
mkdir -p "$root/usr/bin" "$root/etc/regmesh" "$root/tmp" "$root/var/cache/regmesh"
strip --strip-unneeded -o "$root/usr/bin/regmesh" "$bin"
cp "$here/regmesh.yml" "$root/etc/regmesh/regmesh.yml"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nregmesh:x:65532:65532:regmesh:/var/cache/regmesh:/usr/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nregmesh:x:65532:\n' > "$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
chmod 0750 "$root/var/cache/regmesh"
cp /etc/os-release "$root/etc/os-release" 2>/dev/null || true
rootless=""
if [ "$(id -u)" = 0 ]; then
  chown 65532:65532 "$root/var/cache/regmesh"
else
  rootless=--rootless
fi

version=$("$bin" version | awk '{print $2}')
arch=$(dpkg --print-architecture)
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci insert $rootless --image "$out:$tag" "$root" /
umoci config --image "$out:$tag" \
  --os linux --architecture "$arch" \
  --config.user 65532:65532 \
  --config.entrypoint /usr/bin/regmesh \
  --config.cmd serve --config.cmd --config --config.cmd /etc/regmesh/regmesh.yml \
  --config.workingdir /var/cache/regmesh \
  --config.volume /var/cache/regmesh \
  --config.exposedports 5000/tcp --config.exposedports 5001/tcp \
  --config.exposedports 7946/tcp --config.exposedports 7946/udp \
  --config.label org.opencontainers.image.title=regmesh \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label "org.opencontainers.image.description=Registry mirror fleet node" \
  --history.created_by "deploy/image/build.sh (Debian packages: $(echo $pkgs | tr '\n' ' '))"
umoci gc --layout "$out"
echo "built $out:$tag (regmesh $version, $arch, $(du -sh "$out" | cut -f1); packages: $(echo $pkgs | wc -w))"
