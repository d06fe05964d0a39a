#!/usr/bin/env bash
# Build a local OCI image layout with umoci only (no downloads, no engine):
#   OUTDIR/oci:multi  -- config + 3 layers (small text, a few MiB of random
#                        bytes so that uploads are big enough to stream, and a
#                        layer that also deletes a file, i.e. has a whiteout).
# Usage: build-images.sh OUTDIR      Prints nothing but errors.
set -euo pipefail

out="${1:?usage: build-images.sh OUTDIR}"
image="$out/oci"
bundle="$out/bundle"
rootless=()
[[ $(id -u) -eq 0 ]] || rootless=(--rootless)

rm -rf "$image" "$bundle"
mkdir -p "$out"
umoci init --layout "$image"
umoci new --image "$image:multi"

# add_layer MUTATION...: unpack the current image, run the mutation in the
# rootfs, repack as one new layer on top.
add_layer() {
    umoci unpack "${rootless[@]}" --image "$image:multi" "$bundle" >/dev/null
    (cd "$bundle/rootfs" && "$@")
    umoci repack --image "$image:multi" "$bundle" >/dev/null
    rm -rf "$bundle"
}
layer1() { mkdir -p etc && echo "berth e2e image" >etc/berth-release; }
layer2() { mkdir -p data && head -c $((4 * 1024 * 1024)) /dev/urandom >data/random.bin; }
layer3() { rm etc/berth-release && mkdir -p app && printf '#!/bin/sh\necho hi\n' >app/run.sh; }
add_layer layer1
add_layer layer2
add_layer layer3

umoci config --image "$image:multi" --config.entrypoint /app/run.sh \
    --config.env BERTH_E2E=1 --config.label org.berth.test=multi \
    --os linux --architecture amd64
umoci gc --layout "$image"
