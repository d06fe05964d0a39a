#!/usr/bin/env bash
# Pull through a Berth mirror with skopeo and podman, by tag and by digest,
# a single-architecture image and a multi-architecture index, and check
# every digest against what was pushed to the upstream.
# Usage: mirror-pull.sh UPSTREAM_HOSTPORT UPSTREAM_CREDS MIRROR_HOSTPORT PREFIX WORKDIR
#   The images are pushed to UPSTREAM as team/single:1.0 and team/multi:1.0
#   (linux/amd64 + linux/arm64) and pulled from MIRROR as PREFIX/team/...
#   WORKDIR must be a lowercase path (podman names layouts after it).
set -euo pipefail

up="${1:?usage}" creds="${2:?usage}" mirror="${3:?usage}" prefix="${4:?usage}" work="${5:?usage}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

fail() { echo "mirror-pull: FAIL: $*" >&2; exit 1; }
expect_eq() { [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"; }
sha() { echo "sha256:$(sha256sum | cut -d' ' -f1)"; }
raw() { skopeo inspect --raw --tls-verify=false "$1"; }
pull() { skopeo copy --quiet --src-tls-verify=false "$@"; }
podman_() {
    podman --root "$work/podman/storage" --runroot "$work/podman/run" --storage-driver vfs \
        --events-backend file --cgroup-manager cgroupfs "$@"
}

# The images: build-images.sh's amd64 image, an arm64 twin (a new config),
# and an index of both.
"$here/build-images.sh" "$work"
umoci config --image "$work/oci:multi" --tag multi-arm64 --architecture arm64
python3 - "$work/oci" <<'PY'
import hashlib, json, sys
layout = sys.argv[1]
with open(f"{layout}/index.json") as f:
    top = json.load(f)
tagged = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in top["manifests"]}
members = []
for tag, arch in (("multi", "amd64"), ("multi-arm64", "arm64")):
    d = {k: v for k, v in tagged[tag].items() if k != "annotations"}
    d["platform"] = {"architecture": arch, "os": "linux"}
    members.append(d)
body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": members}).encode()
digest = hashlib.sha256(body).hexdigest()
with open(f"{layout}/blobs/sha256/{digest}", "wb") as f:
    f.write(body)
top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                         "digest": "sha256:" + digest, "size": len(body),
                         "annotations": {"org.opencontainers.image.ref.name": "multiarch"}})
with open(f"{layout}/index.json", "w") as f:
    json.dump(top, f)
PY
single_digest="$(raw "oci:$work/oci:multi" | sha)"
arm_digest="$(raw "oci:$work/oci:multi-arm64" | sha)"
index_digest="$(raw "oci:$work/oci:multiarch" | sha)"

# To the upstream (its own auth).
skopeo copy --quiet --dest-tls-verify=false --dest-creds "$creds" --preserve-digests \
    "oci:$work/oci:multi" "docker://$up/team/single:1.0"
skopeo copy --quiet --all --dest-tls-verify=false --dest-creds "$creds" --preserve-digests \
    "oci:$work/oci:multiarch" "docker://$up/team/multi:1.0"

m="docker://$mirror/$prefix/team"
# skopeo, single architecture: by tag, then by digest.
pull "$m/single:1.0" "oci:$work/back-single:v1"
expect_eq "single by tag" "$(raw "oci:$work/back-single:v1" | sha)" "$single_digest"
pull "$m/single@$single_digest" "dir:$work/back-single-digest"
expect_eq "single by digest" "$(sha <"$work/back-single-digest/manifest.json")" "$single_digest"
for blob in "$work"/back-single/blobs/sha256/*; do
    expect_eq "content of $blob" "$(sha <"$blob")" "sha256:${blob##*/}"
done
# skopeo, multi-architecture: the whole index by tag, one platform by the
# index's digest, a platform manifest by its own digest.
pull --all --preserve-digests "$m/multi:1.0" "oci:$work/back-multi:v1"
expect_eq "index by tag" "$(raw "oci:$work/back-multi:v1" | sha)" "$index_digest"
pull --override-arch arm64 "$m/multi@$index_digest" "dir:$work/back-arm64"
expect_eq "arm64 through the index's digest" "$(sha <"$work/back-arm64/manifest.json")" "$arm_digest"
expect_eq "arm64 manifest by digest" "$(raw "$m/multi@$arm_digest" | sha)" "$arm_digest"

# podman: by tag, by digest, and the other platform of the index.
mkdir -p "$work/podman"
podman_ pull -q --tls-verify=false "$mirror/$prefix/team/single:1.0" >/dev/null
expect_eq "podman single by tag" \
    "$(podman_ image inspect --format '{{.Digest}}' "$mirror/$prefix/team/single:1.0")" "$single_digest"
podman_ pull -q --tls-verify=false "$mirror/$prefix/team/multi@$index_digest" >/dev/null
podman_ pull -q --tls-verify=false --arch arm64 "$mirror/$prefix/team/multi:1.0" >/dev/null
expect_eq "podman arm64 by tag" \
    "$(podman_ image inspect --format '{{.Architecture}}' "$mirror/$prefix/team/multi:1.0")" "arm64"
echo "mirror-pull: ok"
