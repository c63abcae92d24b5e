"""Helper of hack/bench-endpoint.sh.

project DIR N        write version N of a Secret's files under DIR, the
                     kubelet's way (a folder, `..data` swapped by a rename)
load DIR PORT COUNT  make COUNT requests with the token, swapping the files
                     every 100; print p50, p99 and max latency (ms) and the
                     rate, and fail on any answer but 200
"""

import datetime
import http.client
import json
import os
import shutil
import sys
import time


def project(folder, n):
    version = os.path.join(folder, f"..v{n}")
    os.makedirs(version)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    expiration = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    files = {
        "credential_process.json": json.dumps({
            "Version": 1, "AccessKeyId": f"ASIABENCH{n:08d}", "SecretAccessKey": "s" * 40,
            "SessionToken": "t" * 600, "Expiration": expiration}),
        "expiration": expiration,
        "endpoint-token": "b" * 64,
    }
    for name, text in files.items():
        with open(os.path.join(version, name), "w") as f:
            f.write(text)
        link = os.path.join(folder, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)
    data = os.path.join(folder, "..data")
    old = os.readlink(data) if os.path.islink(data) else None
    os.symlink(f"..v{n}", os.path.join(folder, "..data_tmp"))
    os.rename(os.path.join(folder, "..data_tmp"), data)
    if old:
        shutil.rmtree(os.path.join(folder, old))


def load(folder, port, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    start = time.perf_counter()
    for i in range(count):
        if i % 100 == 99:
            project(folder, i // 100 + 1)
        t = time.perf_counter()
        conn.request("GET", "/v1/credentials", headers={"Authorization": "b" * 64})
        answer = conn.getresponse()
        answer.read()
        times.append((time.perf_counter() - t) * 1000)
        if answer.status != 200:
            sys.exit(f"request {i}: {answer.status}")
    total = time.perf_counter() - start
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"{pick(0.5):.2f} {pick(0.99):.2f} {times[-1]:.2f} {count / total:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "project":
        project(sys.argv[2], int(sys.argv[3]))
    else:
        load(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
