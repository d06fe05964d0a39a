#!/usr/bin/env python3
"""Garbage collection side by side: berth and CNCF Distribution 2.8.2
(Debian's docker-registry), both on loopback with filesystem storage, given
the same content over HTTP:

- IMAGES images in 10 repositories sharing 5 base layers;
- a multi-platform index per repository whose two children are untagged;
- a signature (a referrer, with `subject`) of one image per repository;
- every fourth image deleted by digest (its tag goes with it);
- 50 stray blob uploads nothing references.

Then each registry's collector runs once, deleting untagged manifests:
Distribution `garbage-collect --delete-untagged` (the registry stopped, as it
requires), berth `berth gc` with `untagged_after = "0s"` and `grace = "0s"`
(while it keeps serving). Reported: wall time, blob files and bytes before
and after, and what still pulls completely afterwards.

Usage: scripts/compare-gc.py BERTH_BINARY [IMAGES]  (default 400)
"""

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    def __init__(self, name, port):
        self.name, self.port = name, port

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), data

    def wait_ready(self):
        for _ in range(500):
            try:
                if self.request("GET", "/v2/")[0] in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"{self.name} did not come up")

    def blob(self, repo, data):
        status, _, body = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status == 202:
            # Distribution 2.8 ignores ?digest= on POST: finish with PUT.
            _, headers, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/")
            loc = headers.get("Location") or headers.get("location")
            loc = loc.replace(f"http://127.0.0.1:{self.port}", "")
            sep = "&" if "?" in loc else "?"
            status, _, body = self.request(
                "PUT", f"{loc}{sep}digest={sha(data)}", data,
                {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            raise SystemExit(f"{self.name}: blob upload to {repo}: {status} {body[:200]}")

    def manifest(self, repo, ref, body, media_type=OCI):
        status, _, resp = self.request("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type})
        if status != 201:
            raise SystemExit(f"{self.name}: manifest {repo}:{ref}: {status} {resp[:300]}")
        return sha(body)

    def delete_manifest(self, repo, digest):
        status, _, resp = self.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        if status != 202:
            raise SystemExit(f"{self.name}: delete {repo}@{digest}: {status} {resp[:200]}")

    def pulls(self, repo, ref, accept):
        status, _, body = self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
        if status != 200:
            return False
        m = json.loads(body)
        for d in ([m["config"]] if "config" in m else []) + m.get("layers", []):
            status, _, data = self.request("GET", f"/v2/{repo}/blobs/{d['digest']}")
            if status != 200 or sha(data) != d["digest"]:
                return False
        for child in m.get("manifests", []):
            if not self.pulls(repo, child["digest"], child["mediaType"]):
                return False
        return True


def content(seed, size):
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{n}".encode()).digest()
        n += 1
    return bytes(out[:size])


def desc(media_type, data):
    return {"mediaType": media_type, "digest": sha(data), "size": len(data)}


def image(reg, repo, seed, base, subject=None):
    cfg = json.dumps({"seed": seed}).encode()
    own = content(f"own-{seed}", 20_000)
    for b in (cfg, base, own):
        reg.blob(repo, b)
    m = {"schemaVersion": 2, "mediaType": OCI, "config": desc("application/vnd.oci.image.config.v1+json", cfg),
         "layers": [desc("application/vnd.oci.image.layer.v1.tar", base),
                    desc("application/vnd.oci.image.layer.v1.tar", own)]}
    if subject is not None:
        m["subject"] = subject
        m["artifactType"] = "application/vnd.example.signature"
    return json.dumps(m).encode()


def populate(reg, images):
    bases = [content(f"base-{i}", 200_000) for i in range(5)]
    kept = []  # (repo, ref, accept) that must pull afterwards
    for i in range(images):
        repo = f"farm/r{i % 10}"
        body = image(reg, repo, f"img-{i}", bases[i % 5])
        digest = reg.manifest(repo, f"t{i}", body)
        if i % 4 == 0:
            reg.delete_manifest(repo, digest)
        else:
            kept.append((repo, f"t{i}", OCI))
    for r in range(10):
        repo = f"farm/r{r}"
        children = []
        for arch in ("amd64", "arm64"):
            body = image(reg, repo, f"index-{r}-{arch}", bases[r % 5])
            children.append(dict(desc(OCI, body), platform={"architecture": arch, "os": "linux"}))
            reg.manifest(repo, sha(body), body)
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": children}).encode()
        reg.manifest(repo, "multi", index, INDEX)
        kept.append((repo, "multi", INDEX))
        # A signature of a kept image of this repository (t<r+10>, or
        # t<r+20> where every fourth image was deleted).
        target = r + 10 if (r + 10) % 4 else r + 20
        status, _, subject_body = reg.request("GET", f"/v2/{repo}/manifests/t{target}", headers={"Accept": OCI})
        if status != 200:
            raise SystemExit(f"{reg.name}: cannot read {repo}:t{target}")
        sig = image(reg, repo, f"sig-{r}", bases[0], subject=desc(OCI, subject_body))
        reg.manifest(repo, sha(sig), sig)
        kept.append((repo, sha(sig), OCI))
    for s in range(50):
        reg.blob(f"farm/r{s % 10}", content(f"stray-{s}", 10_000))
    return kept


def blob_files(root, marker):
    count = size = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            if marker(dirpath, f):
                count += 1
                size += os.path.getsize(os.path.join(dirpath, f))
    return count, size


def main():
    berth_bin = sys.argv[1]
    images = max(30, int(sys.argv[2]) if len(sys.argv) > 2 else 400)
    work = tempfile.mkdtemp(prefix="compare-gc-")
    procs = []
    try:
        pb, pd = free_port(), free_port()
        os.makedirs(f"{work}/berth")
        with open(f"{work}/berth.toml", "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{pb}"\n[storage.fs]\nroot = "{work}/berth"\n'
                    f'[gc]\nenabled = false\ngrace = "0s"\nuntagged_after = "0s"\n')
        with open(f"{work}/dist.yml", "w") as f:
            f.write(f"version: 0.1\nlog: {{ level: error, accesslog: {{ disabled: true }} }}\n"
                    f"storage: {{ filesystem: {{ rootdirectory: {work}/dist }}, delete: {{ enabled: true }} }}\n"
                    f"http: {{ addr: 127.0.0.1:{pd} }}\n")
        procs.append(subprocess.Popen([berth_bin, "serve", "--config", f"{work}/berth.toml"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        dist = subprocess.Popen(["docker-registry", "serve", f"{work}/dist.yml"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dist)
        berth, distribution = Registry("berth", pb), Registry("distribution", pd)
        berth.wait_ready()
        distribution.wait_ready()
        kept = {}
        for reg in (berth, distribution):
            kept[reg.name] = populate(reg, images)

        def berth_blob(d, f):
            return f.endswith("@")

        def dist_blob(d, f):
            return f == "data" and "/blobs/sha256/" in d

        rows = []
        before_b = blob_files(f"{work}/berth/blobs", berth_blob)
        t = time.monotonic()
        out = subprocess.run([berth_bin, "gc", "--config", f"{work}/berth.toml", "--json"],
                             capture_output=True, text=True, check=True)
        berth_time = time.monotonic() - t
        report = json.loads(out.stdout)
        after_b = blob_files(f"{work}/berth/blobs", berth_blob)
        berth_ok = sum(berth.pulls(*k) for k in kept["berth"])
        rows.append(("berth gc (online)", berth_time, before_b, after_b, berth_ok, len(kept["berth"]),
                     report["deleted"]))

        before_d = blob_files(f"{work}/dist", dist_blob)
        dist.terminate()
        dist.wait()
        t = time.monotonic()
        subprocess.run(["docker-registry", "garbage-collect", "--delete-untagged", f"{work}/dist.yml"],
                       capture_output=True, text=True, check=True)
        dist_time = time.monotonic() - t
        after_d = blob_files(f"{work}/dist", dist_blob)
        procs.remove(dist)
        procs.append(subprocess.Popen(["docker-registry", "serve", f"{work}/dist.yml"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        distribution.wait_ready()
        dist_ok = sum(distribution.pulls(*k) for k in kept["distribution"])
        rows.append(("distribution garbage-collect --delete-untagged (stopped)", dist_time, before_d, after_d,
                     dist_ok, len(kept["distribution"]), None))

        print(f"\n{images} images in 10 repositories, plus 10 indexes (2 untagged children each), "
              f"signatures, {images // 4} deleted images and 50 stray uploads:\n")
        print("| collector | time | blobs before | blobs after | bytes before | bytes after | images that still pull |")
        print("|---|---|---|---|---|---|---|")
        for name, took, before, after, ok, total, _ in rows:
            print(f"| {name} | {took:.2f} s | {before[0]} | {after[0]} | {before[1]} | {after[1]} | {ok} of {total} |")
        print(f"\nberth deleted: {json.dumps(rows[0][6])}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
