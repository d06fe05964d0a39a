#!/usr/bin/env python3
"""Referrers API end to end with oras-py (OCI Distribution Spec v1.1).

Usage: oras_referrers.py REGISTRY_HOSTPORT   (run with the test venv's python)
With ORAS_USERNAME and ORAS_PASSWORD set, oras-py authenticates with them
(ORAS_AUTH_BACKEND: "token", the default, runs the token flow from the
registry's challenge; "basic" sends Basic credentials on every request), and
the raw checks send them as Basic credentials.

Pushes to e2e/artifact, over plain HTTP:
  * the subject, tag v1: an oras-py artifact of one file, uploaded in chunks;
  * an SBOM referrer: top-level artifactType application/vnd.berth.test.sbom,
    empty config, `subject` -> v1; blobs pushed with oras-py, the manifest
    built here and PUT by digest through oras-py's request layer;
  * a signature referrer, pushed by oras-py's own push(subject=...): it has
    no artifactType, so the registry must report its config mediaType.
Then checks each PUT's OCI-Subject header and GET /v2/e2e/artifact/referrers/
with and without ?artifactType=. All content is fixed, so digests are stable
across runs and re-running against the same registry lists the same set.
Every check runs; failures are listed at the end and the exit code is 1.
"""
import hashlib
import json
import os
import sys
import tempfile

import oras.oci
import oras.provider
import requests

REPO = "e2e/artifact"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SBOM_TYPE = "application/vnd.berth.test.sbom"
SIG_TYPE = "application/vnd.berth.test.signature"
OTHER_TYPE = "application/vnd.berth.test.other"

failures = []
AUTH = None
if os.environ.get("ORAS_USERNAME"):
    AUTH = (os.environ["ORAS_USERNAME"], os.environ.get("ORAS_PASSWORD", ""))


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"oras-referrers: FAIL: {what}", file=sys.stderr)
    return ok


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(directory, name, data):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def require(response, status, what):
    """Fail hard: later steps depend on this request."""
    if response.status_code != status:
        sys.exit(f"oras-referrers: FAIL: {what}: HTTP {response.status_code}, "
                 f"want {status}: {response.text[:500]}")
    return response


def check_subject_header(response, subject, what):
    got = response.headers.get("OCI-Subject")
    check(got == subject["digest"],
          f"{what}: OCI-Subject header is {got!r}, want {subject['digest']!r}")


def main(registry, tmp):
    base = f"http://{registry}/v2/{REPO}"
    backend = os.environ.get("ORAS_AUTH_BACKEND", "token")
    client = oras.provider.Registry(hostname=registry, insecure=True, auth_backend=backend)
    if AUTH:
        client.auth.set_basic_auth(*AUTH)
    container = client.get_container(f"{registry}/{REPO}")

    # 1. Subject: oras-py push of one deterministic file, in 1 KiB chunks.
    subject_file = write(tmp, "subject.txt",
                         b"".join(b"berth subject line %04d\n" % i for i in range(200)))
    require(client.push(target=f"{registry}/{REPO}:v1", files=[subject_file],
                        disable_path_validation=True, do_chunked=True,
                        chunk_size=1024, quiet=True), 201, "push subject")
    r = require(requests.get(auth=AUTH, url=f"{base}/manifests/v1", headers={"Accept": OCI_MANIFEST}),
                200, "GET subject manifest")
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(r.content), "size": len(r.content)}
    check(r.headers.get("Docker-Content-Digest") in (None, subject["digest"]),
          "subject GET: Docker-Content-Digest does not match the body")

    # 2. SBOM referrer: blobs through oras-py, manifest built here with
    #    artifactType + subject, PUT by digest with the exact bytes hashed.
    sbom_file = write(tmp, "sbom.spdx.json", b'{"spdxVersion": "SPDX-2.3", "name": "berth-e2e"}\n')
    empty_file = write(tmp, "empty.json", b"{}")
    sbom_layer = oras.oci.NewLayer(sbom_file, media_type="application/spdx+json")
    sbom_layer["annotations"] = {"org.opencontainers.image.title": "sbom.spdx.json"}
    empty_config = oras.oci.NewLayer(empty_file, media_type=OCI_EMPTY)
    for path, layer in ((sbom_file, sbom_layer), (empty_file, empty_config)):
        r = client.upload_blob(path, container, layer)
        check(r.status_code in (200, 201), f"upload blob {layer['digest']}: HTTP {r.status_code}")
    sbom_annotations = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z",
                        "org.berth.test.kind": "sbom"}
    sbom_manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": empty_config,
        "layers": [sbom_layer],
        "subject": subject,
        "annotations": sbom_annotations,
    }, sort_keys=True).encode()
    sbom = {"mediaType": OCI_MANIFEST, "digest": sha256(sbom_manifest),
            "size": len(sbom_manifest), "artifactType": SBOM_TYPE,
            "annotations": sbom_annotations}
    r = require(client.do_request(f"{base}/manifests/{sbom['digest']}", "PUT",
                                  data=sbom_manifest, headers={"Content-Type": OCI_MANIFEST}),
                201, "PUT SBOM referrer manifest")
    check(r.headers.get("Docker-Content-Digest") in (None, sbom["digest"]),
          "SBOM PUT: Docker-Content-Digest differs from the digest pushed")
    check_subject_header(r, subject, "SBOM PUT")

    # 3. Signature referrer: oras-py push(subject=...), config mediaType only.
    sig_config = write(tmp, "signature-config.json", b'{"signer": "berth-e2e"}')
    sig_file = write(tmp, "signature.sig", b"not really a signature\n")
    r = require(client.push(target=f"{registry}/{REPO}:v1-signature", files=[sig_file],
                            manifest_config=f"{sig_config}:{SIG_TYPE}",
                            subject=oras.oci.Subject(**subject),
                            disable_path_validation=True, quiet=True),
                201, "push signature referrer")
    check_subject_header(r, subject, "signature push")
    r = require(requests.get(auth=AUTH, url=f"{base}/manifests/v1-signature", headers={"Accept": OCI_MANIFEST}),
                200, "GET signature manifest")
    check(json.loads(r.content).get("subject") == subject, "signature manifest lost its subject")
    sig = {"mediaType": OCI_MANIFEST, "digest": sha256(r.content),
           "size": len(r.content), "artifactType": SIG_TYPE}

    # 4. The referrers API.
    def referrers(digest, artifact_type=None):
        params = {"artifactType": artifact_type} if artifact_type else None
        what = f"referrers of {digest[:19]}" + (f"?artifactType={artifact_type}" if params else "")
        r = requests.get(auth=AUTH, url=f"{base}/referrers/{digest}", params=params)
        if not check(r.status_code == 200, f"{what}: HTTP {r.status_code}, want 200"):
            return what, r, None
        check(r.headers.get("Content-Type") == OCI_INDEX,
              f"{what}: Content-Type {r.headers.get('Content-Type')!r}, want {OCI_INDEX!r}")
        if params:
            check(r.headers.get("OCI-Filters-Applied") == "artifactType",
                  f"{what}: OCI-Filters-Applied {r.headers.get('OCI-Filters-Applied')!r}")
        index = r.json()
        check(index.get("schemaVersion") == 2 and index.get("mediaType") == OCI_INDEX,
              f"{what}: not an OCI image index: {r.text[:300]}")
        return what, r, {m.get("digest"): m for m in index.get("manifests", [])}

    def expect(digest, artifact_type, want):
        what, r, listed = referrers(digest, artifact_type)
        if listed is None:
            return
        check(set(listed) == {d["digest"] for d in want},
              f"{what}: lists {sorted(listed)}, want {sorted(d['digest'] for d in want)}")
        for d in want:
            got = listed.get(d["digest"])
            if got is not None:
                for key, value in d.items():
                    check(got.get(key) == value,
                          f"{what}: {d['digest'][:19]} {key} is {got.get(key)!r}, want {value!r}")

    expect(subject["digest"], None, [sbom, sig])
    expect(subject["digest"], SBOM_TYPE, [sbom])
    expect(subject["digest"], SIG_TYPE, [sig])
    expect(subject["digest"], OTHER_TYPE, [])
    expect(sha256(b"no such manifest"), None, [])  # unknown subject: 200, empty

    if failures:
        sys.exit(f"oras-referrers: {len(failures)} check(s) failed")
    print("oras-referrers: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: oras_referrers.py REGISTRY_HOSTPORT")
    with tempfile.TemporaryDirectory(prefix="oras-referrers-") as tmp:
        main(sys.argv[1], tmp)
