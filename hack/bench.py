#!/usr/bin/env python3
"""Helpers of hack/bench.sh.

  bench.py others COUNT NAMESPACE...   YAML of COUNT unrelated Secrets of a
                                       real cluster's sizes, spread over the
                                       namespaces, on stdout
  bench.py requests                    the API server's own request counts
                                       (apiserver_request_total), read from
                                       `kubectl get --raw /metrics` on stdin,
                                       as JSON {"VERB resource[/sub]": n}
  bench.py delta BEFORE AFTER          AFTER minus BEFORE (files of the above)
  bench.py proc PID                    {"rss_mib", "peak_mib", "cpu_s"} of a process
  bench.py ready N                     reads `NAMESPACE/NAME STATUS` lines of a
                                       watch on stdin; exits once N distinct
                                       AssumedRoles are Ready
  bench.py wave EXPIRES SINCE          the refresh wave, from the STS stand-in's
                                       report on stdin: the AssumeRole calls
                                       after SINCE (epoch seconds), for
                                       credentials that all expire at EXPIRES
"""
import base64
import json
import os
import random
import re
import sys


def others(count, namespaces):
    """A third each: Helm release Secrets (a gzipped, base64'd release of
    about 16 KiB, as Helm stores them), TLS Secrets (a 2 KiB chain and a
    key), and small application Secrets; some carry the last-applied
    annotation that `kubectl apply` leaves, as many clusters' do."""
    rng = random.Random(42)
    # One real key pair (BENCH_TLS_DIR/tls.crt and tls.key, from openssl),
    # so that the API server takes the TLS Secrets without a warning each.
    tls_dir = os.environ["BENCH_TLS_DIR"]
    tls = {
        key: base64.b64encode(open(os.path.join(tls_dir, key), "rb").read()).decode()
        for key in ("tls.crt", "tls.key")
    }

    def blob(n):
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(n))

    out = sys.stdout
    for i in range(count):
        ns = namespaces[i % len(namespaces)]
        kind = i % 3
        if kind == 0:
            name = f"sh.helm.release.v1.app-{i}.v1"
            labels = {"owner": "helm", "name": f"app-{i}", "status": "deployed", "version": "1"}
            secret = {"type": "helm.sh/release.v1", "data": {"release": blob(16 * 1024)}}
        elif kind == 1:
            name = f"tls-{i}"
            labels = {"app.kubernetes.io/name": f"ingress-{i}"}
            secret = {"type": "kubernetes.io/tls", "data": tls}
        else:
            name = f"app-config-{i}"
            labels = {"app": f"app-{i}"}
            secret = {"type": "Opaque", "data": {"DATABASE_URL": blob(120), "API_KEY": blob(60)}}
        meta = {"name": name, "namespace": ns, "labels": labels}
        if i % 6 == 2:
            applied = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, **secret}
            meta["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)}
        out.write("---\n" + json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": meta, **secret}) + "\n")


LINE = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def requests():
    counts = {}
    for line in sys.stdin:
        m = LINE.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = f'{labels.get("verb", "")} {resource}'
        counts[key] = counts.get(key, 0) + int(float(m.group(2)))
    json.dump(counts, sys.stdout, sort_keys=True)


def delta(before, after):
    a, b = json.load(open(before)), json.load(open(after))
    json.dump({k: b[k] - a.get(k, 0) for k in sorted(b) if b[k] - a.get(k, 0)}, sys.stdout, sort_keys=True)


def proc(pid):
    status = open(f"/proc/{pid}/status").read()
    kib = lambda key: int(re.search(rf"^{key}:\s+(\d+)", status, re.M).group(1))
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    json.dump({"rss_mib": round(kib("VmRSS") / 1024, 1), "peak_mib": round(kib("VmHWM") / 1024, 1), "cpu_s": round(cpu, 2)}, sys.stdout)


def ready(n):
    seen = set()
    for line in sys.stdin:
        name, _, status = line.strip().partition(" ")
        if status == "True":
            seen.add(name)
        else:
            seen.discard(name)
        if len(seen) >= n:
            return


FLOOR_SECONDS = 300  # schedule::FLOOR: a refresh is due at the latest this long before expiry


def wave(expires, since):
    calls = [c["at"] for c in json.load(sys.stdin)["sessions"] if c["action"] == "AssumeRole" and c["at"] > since]
    floor = expires - FLOOR_SECONDS
    # A refresh runs in the second it is due: one at the floor is on time.
    late = [t for t in calls if t > floor + 1]
    json.dump(
        {
            "first": min(calls) if calls else None,
            "calls": len(calls),
            "first_before_floor_s": round(floor - min(calls), 1) if calls else None,
            "ms": round((max(calls) - min(calls)) * 1000) if calls else None,
            "passed_floor": len(late),
            "late_s": round(max(late) - floor, 1) if late else 0,
            "expired": sum(1 for t in calls if t > expires),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "others":
        others(int(args[0]), args[1:])
    elif cmd == "requests":
        requests()
    elif cmd == "delta":
        delta(*args)
    elif cmd == "proc":
        proc(args[0])
    elif cmd == "ready":
        ready(int(args[0]))
    elif cmd == "wave":
        wave(float(args[0]), float(args[1]))
    else:
        sys.exit(__doc__)
