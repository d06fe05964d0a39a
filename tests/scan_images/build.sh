#!/usr/bin/env bash
# Build the scanner's test images as OCI layouts under OUT, from content
# on this machine: its dpkg database, a distroless-style status.d, an apk
# database, an rpmdb written by rpm itself, the test venv's pip-installed
# packages, the npm install of scripts/oracles, a Go binary built by
# Debian's Go, and the berth release binary (cargo auditable). umoci
# builds most of them; the Alpine one is built with buildah. Later layers
# delete and replace packages (umoci writes the whiteouts).
# Usage: build.sh OUT BERTH_BIN VENV_SITE_PACKAGES NODE_MODULES NPM_LOCK
set -euo pipefail
out="$1" berth_bin="$2" site="$3" node_modules="$4" npm_lock="$5"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS= GOPROXY=off GOSUMDB=off CGO_ENABLED=0 GOCACHE="$work/gocache" GOPATH="$work/gopath"

layer() { # layer IMAGE BUNDLE SCRIPT: unpack, change the rootfs, repack
    local image="$1" bundle="$work/bundle"
    rm -rf "$bundle"
    umoci unpack --rootless --image "$image" "$bundle" >/dev/null
    (cd "$bundle/rootfs" && eval "$2")
    umoci repack --image "$image" "$bundle" >/dev/null
    rm -rf "$bundle"
}
new_image() {
    umoci init --layout "$out/$1" >/dev/null
    umoci new --image "$out/$1:t"
}

# A Go binary: Debian's Go, one local module.
mkdir -p "$work/hello"
cat >"$work/hello/go.mod" <<'GO'
module example.com/hello

go 1.19
GO
cat >"$work/hello/main.go" <<'GO'
package main

import "fmt"

func main() { fmt.Println("hello") }
GO
(cd "$work/hello" && go build -trimpath -o "$work/hello-bin" .)

# debian: this machine's dpkg database, pip and npm installs, the Go and
# berth binaries; then a layer that removes packages.
new_image debian
layer "$out/debian:t" "mkdir -p etc var/lib/dpkg && cp -L /etc/os-release etc/os-release && cp /etc/debian_version etc/ && cp /var/lib/dpkg/status var/lib/dpkg/status"
layer "$out/debian:t" "mkdir -p usr/lib/python3/site-packages app usr/local/bin && cp -r $site/*.dist-info usr/lib/python3/site-packages/ && cp -r $node_modules app/node_modules && mkdir -p srv && cp -r $node_modules srv/node_modules && cp $npm_lock app/package-lock.json && cp $work/hello-bin usr/local/bin/hello && cp $berth_bin usr/local/bin/berth"
# Later: the requests distribution and one of the two copies of the semver
# npm package deleted (whiteouts), the dpkg database replaced by one without vim*.
layer "$out/debian:t" "rm -rf usr/lib/python3/site-packages/requests-*.dist-info srv/node_modules/semver && python3 - <<'PY'
import re
text = open('var/lib/dpkg/status').read()
keep = [p for p in text.split('\n\n') if p.strip() and not re.match(r'Package: vim', p)]
open('var/lib/dpkg/status', 'w').write('\n\n'.join(keep) + '\n')
PY"
umoci config --image "$out/debian:t" --os linux --architecture amd64 >/dev/null
umoci gc --layout "$out/debian"

# distroless: status.d files only.
new_image distroless
layer "$out/distroless:t" "mkdir -p etc var/lib/dpkg/status.d && cp -L /etc/os-release etc/os-release && cp /etc/debian_version etc/ && python3 - <<'PY'
text = open('/var/lib/dpkg/status').read()
for p in text.split('\n\n'):
    name = next((l.split(': ', 1)[1] for l in p.splitlines() if l.startswith('Package: ')), None)
    if name in ('base-files', 'tzdata', 'libc6', 'libssl3', 'netbase', 'ca-certificates'):
        open('var/lib/dpkg/status.d/' + name, 'w').write(p.strip() + '\n')
PY"
umoci config --image "$out/distroless:t" --os linux --architecture amd64 >/dev/null
umoci gc --layout "$out/distroless"

# rocky: an rpmdb.sqlite written by rpm (--justdb) from two built packages.
mkdir -p "$work/rpm/SPECS" "$work/rpmroot"
for spec in "tiny 1.2.3 4 1" "tinier 0.9~rc1 1.el9 0"; do
    read -r name version release epoch <<<"$spec"
    {
        echo "Name: $name"; echo "Version: $version"; echo "Release: $release"
        [[ "$epoch" != 0 ]] && echo "Epoch: $epoch"
        echo "Summary: test package"; echo "License: MIT"; echo "BuildArch: noarch"
        echo "%description"; echo "test"
        echo "%install"; echo "mkdir -p %{buildroot}/usr/share/$name && echo hi > %{buildroot}/usr/share/$name/hi"
        echo "%files"; echo "/usr/share/$name/hi"
    } >"$work/rpm/SPECS/$name.spec"
    rpmbuild --quiet --define "_topdir $work/rpm" -bb "$work/rpm/SPECS/$name.spec" >/dev/null 2>&1
done
rpm --root "$work/rpmroot" --dbpath /usr/lib/sysimage/rpm -i --nodeps --justdb --noscripts "$work"/rpm/RPMS/noarch/*.rpm 2>/dev/null
sqlite3 "$work/rpmroot/usr/lib/sysimage/rpm/rpmdb.sqlite" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
new_image rocky
layer "$out/rocky:t" "mkdir -p etc usr/lib/sysimage/rpm && printf 'NAME=\"Rocky Linux\"\nID=\"rocky\"\nVERSION_ID=\"9.3\"\n' >etc/os-release && echo 'Rocky Linux release 9.3 (Blue Onyx)' >etc/rocky-release && cp etc/rocky-release etc/redhat-release && cp $work/rpmroot/usr/lib/sysimage/rpm/rpmdb.sqlite usr/lib/sysimage/rpm/"
umoci config --image "$out/rocky:t" --os linux --architecture amd64 >/dev/null
umoci gc --layout "$out/rocky"

# alpine, with buildah: an apk database in its installed format.
ctx="$work/alpine/rootfs"
mkdir -p "$ctx/etc" "$ctx/lib/apk/db"
printf 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\n' >"$ctx/etc/os-release"
echo 3.20.3 >"$ctx/etc/alpine-release"
cat >"$ctx/lib/apk/db/installed" <<'APK'
C:Q1Xvr1TfvJ4hr4Cz0AzQyaQYX8LY0=
P:musl
V:1.2.5-r0
A:x86_64
S:409766
I:654336
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1718291540
c:3a4d8bbaf75cdc8aa5d69541a6b4a9bf3fd7e99b
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755

C:Q1mVX6i4tf1A0VbYh3VGFyyVFNd4E=
P:libcrypto3
V:3.3.1-r0
A:x86_64
L:Apache-2.0
o:openssl
D:so:libc.musl-x86_64.so.1
F:usr/lib
R:libcrypto.so.3

C:Q1c8l+dBf4N5Mb1m7hOXZKTUk9W3U=
P:busybox
V:1.36.1-r29
A:x86_64
L:GPL-2.0-only
o:busybox
F:bin
R:busybox
APK
b="buildah --storage-driver vfs --root $work/bstore --runroot $work/brun"
c="$($b from scratch)"
$b copy "$c" "$ctx/" / >/dev/null
$b config --os linux --arch amd64 "$c"
$b commit -q "$c" localhost/scan-alpine:t >/dev/null
$b push -q localhost/scan-alpine:t "oci:$out/alpine:t"
$b rm "$c" >/dev/null
$b rmi -f localhost/scan-alpine:t >/dev/null 2>&1 || true
