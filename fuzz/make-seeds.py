#!/usr/bin/env python3
"""Writes small seed archives for the load fuzz target: one of each shape
rimg reads (legacy Docker with a symlinked layer, skopeo-style, OCI with
plain and gzip layers and a nested index), each with a tiny layer, so the
fuzzer starts from valid structure instead of 4 MB real archives."""
import gzip, hashlib, io, json, os, sys, tarfile

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def layer(files):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            i = tarfile.TarInfo(name); i.size = len(data); i.mtime = 0
            t.addfile(i, io.BytesIO(data))
    return b.getvalue()

def sha(b): return hashlib.sha256(b).hexdigest()

def archive(entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in entries:
            i = tarfile.TarInfo(name); i.mtime = 0
            if isinstance(data, tuple):
                i.type = tarfile.SYMTYPE; i.linkname = data[1]
                t.addfile(i)
            else:
                i.size = len(data); t.addfile(i, io.BytesIO(data))
    return b.getvalue()

l1 = layer([("hello", b"hi\n")])
l2 = layer([("etc/x", b"x")])
def config(diffs):
    return json.dumps({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(d) for d in diffs]}}).encode()
c = config([l1, l2, l1])

legacy = archive([
    ("a/layer.tar", l1), ("b/layer.tar", l2), ("c/layer.tar", ("sym", "../a/layer.tar")),
    (sha(c) + ".json", c),
    ("manifest.json", json.dumps([{"Config": sha(c) + ".json", "RepoTags": ["x:1"],
        "Layers": ["a/layer.tar", "b/layer.tar", "c/layer.tar"]}]).encode()),
])
open(f"{out}/legacy.tar", "wb").write(legacy)
open(f"{out}/legacy.tar.gz", "wb").write(gzip.compress(legacy))

g1 = gzip.compress(l1, mtime=0)
c2 = config([l1, l2])
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(c2), "size": len(c2)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + sha(g1), "size": len(g1)},
               {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + sha(l2), "size": len(l2)}]}).encode()
inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(m), "size": len(m),
                   "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
top = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + sha(inner), "size": len(inner),
     "annotations": {"io.containerd.image.name": "docker.io/library/y:2", "org.opencontainers.image.ref.name": "2"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + sha(m), "size": len(m)}]}).encode()
oci = archive([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')] +
    [("blobs/sha256/" + sha(b), b) for b in (g1, l2, c2, m, inner)] + [("index.json", top)])
open(f"{out}/oci.tar", "wb").write(oci)
