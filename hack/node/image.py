#!/usr/bin/env python3
"""Writes a one-layer image as a docker-archive tar, for `ctr images import`.

    image.py OUT TAG [--entrypoint PATH] [--user UID] ENTRY...

Each ENTRY is `SRC=DST` (a file copied to DST, mode kept) or `DST@TARGET` (a
symbolic link). Parent folders are made. The archive is reproducible: the same
entries give the same bytes, so the same image ID.

The node's images are made this way, since no registry can be reached: the
sandbox ("pause") image, and the test workloads' images of static binaries.
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def layer(entries):
    buf = io.BytesIO()
    dirs = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_parents(path):
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)

        for entry in entries:
            if "@" in entry:
                dst, target = entry.split("@", 1)
                add_parents(dst)
                info = tarfile.TarInfo(dst.strip("/"))
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
            else:
                src, dst = entry.split("=", 1)
                add_parents(dst)
                with open(src, "rb") as f:
                    data = f.read()
                info = tarfile.TarInfo(dst.strip("/"))
                info.size, info.mode = len(data), os.stat(src).st_mode & 0o7777
                tar.addfile(info, io.BytesIO(data))
        # A writable /tmp, as most programs expect one.
        info = tarfile.TarInfo("tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)
    return buf.getvalue()


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, tag, rest = argv[0], argv[1], argv[2:]
    entrypoint, user, entries = None, None, []
    while rest:
        arg = rest.pop(0)
        if arg == "--entrypoint":
            entrypoint = [rest.pop(0)]
        elif arg == "--user":
            user = rest.pop(0)
        else:
            entries.append(arg)
    data = layer(entries)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/node/image.py"}],
    }
    if entrypoint:
        config["config"]["Entrypoint"] = entrypoint
    if user:
        config["config"]["User"] = user
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (
            ("layer.tar", data),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))


if __name__ == "__main__":
    main(sys.argv[1:])
