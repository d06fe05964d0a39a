#!/usr/bin/env bash
# Round-trip the umoci-built image through a registry with skopeo, as OCI and
# as Docker schema 2, and check that every digest survives.
# Usage: skopeo-roundtrip.sh REGISTRY_HOSTPORT WORKDIR
# WORKDIR/oci:multi is built with build-images.sh unless it already exists.
set -euo pipefail

reg="${1:?usage: skopeo-roundtrip.sh REGISTRY_HOSTPORT WORKDIR}"
work="${2:?usage: skopeo-roundtrip.sh REGISTRY_HOSTPORT WORKDIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tls=(--src-tls-verify=false --dest-tls-verify=false)
docker_v2s2=application/vnd.docker.distribution.manifest.v2+json

fail() { echo "skopeo-roundtrip: FAIL: $*" >&2; exit 1; }
expect_eq() { # WHAT GOT WANT
    [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
}
copy() { skopeo copy --quiet "${tls[@]}" "$@"; }
sha() { echo "sha256:$(sha256sum | cut -d' ' -f1)"; }
raw() { skopeo inspect --raw --tls-verify=false "$1"; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# layers IMAGE: layer digests in manifest order, one per line
layers() { skopeo inspect --tls-verify=false --format '{{range .Layers}}{{println .}}{{end}}' "$1"; }

[[ -f "$work/oci/index.json" ]] || "$here/build-images.sh" "$work"
src="oci:$work/oci:multi"
src_digest="$(raw "$src" | sha)"
src_layers="$(layers "$src")"
[[ $(wc -l <<<"$src_layers") -ge 3 ]] || fail "source image has fewer than 3 layers"

# (a) OCI manifest, pushed byte for byte, and pulled back into a new layout.
oci_ref="docker://$reg/e2e/oci-image:v1"
copy --preserve-digests --digestfile "$work/oci-pushed.digest" "$src" "$oci_ref"
expect_eq "pushed OCI digest" "$(cat "$work/oci-pushed.digest")" "$src_digest"
rm -rf "$work/back-oci"
copy "$oci_ref" "oci:$work/back-oci:v1"
expect_eq "OCI manifest digest after round trip" "$(raw "oci:$work/back-oci:v1" | sha)" "$src_digest"
expect_eq "OCI layers after round trip" "$(layers "oci:$work/back-oci:v1")" "$src_layers"
for blob in "$work"/back-oci/blobs/sha256/*; do
    expect_eq "content of $blob" "$(sha <"$blob")" "sha256:${blob##*/}"
done

# (b) Converted to Docker schema 2 on push; pulled back into dir: (raw bytes).
docker_ref="docker://$reg/e2e/docker-image:v1"
copy --format v2s2 "$src" "$docker_ref"
raw "$docker_ref" >"$work/docker-manifest.json"
expect_eq "Docker manifest mediaType" "$(json_field mediaType <"$work/docker-manifest.json")" "$docker_v2s2"
docker_digest="$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "$docker_ref")"
expect_eq "Docker manifest digest (inspect vs raw bytes)" "$(sha <"$work/docker-manifest.json")" "$docker_digest"
content_type="$(curl -fsSI -H "Accept: $docker_v2s2" "http://$reg/v2/e2e/docker-image/manifests/v1" |
    tr -d '\r' | awk -F': ' 'tolower($1) == "content-type" {print $2}')"
expect_eq "Docker manifest Content-Type" "$content_type" "$docker_v2s2"
rm -rf "$work/back-docker"
copy "$docker_ref" "dir:$work/back-docker"
expect_eq "Docker manifest digest after round trip" "$(sha <"$work/back-docker/manifest.json")" "$docker_digest"
expect_eq "Docker layers after round trip" "$(layers "dir:$work/back-docker")" "$src_layers"

# (c) Inspect by tag and list tags.
expect_eq "inspect by tag: digest" \
    "$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "$oci_ref")" "$src_digest"
expect_eq "inspect by tag: layers" "$(layers "$oci_ref")" "$src_layers"
for repo in oci-image docker-image; do
    tags="$(skopeo list-tags --tls-verify=false "docker://$reg/e2e/$repo" | json_field Tags)"
    expect_eq "tags of e2e/$repo" "$tags" "['v1']"
done

echo "skopeo-roundtrip: ok"
