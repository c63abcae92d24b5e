"""A long-running AWS client, as a pod would run one.

Started once with AWS_CONFIG_FILE pointing into the mounted Secret, it calls
STS GetCallerIdentity in a loop and prints one JSON line per call: whether it
succeeded and a fingerprint of the access key it used. It stops after it has
used `want` distinct keys, or at the deadline.
"""

import hashlib
import json
import sys
import time

import boto3


def main(want: int, deadline_seconds: float, interval: float) -> None:
    session = boto3.session.Session()
    sts = session.client("sts")
    seen = []
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline and len(seen) < want:
        line = {"ok": False}
        try:
            arn = sts.get_caller_identity()["Arn"]
            key = session.get_credentials().get_frozen_credentials().access_key
            fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
            if fingerprint not in seen:
                seen.append(fingerprint)
            line = {"ok": True, "arn": arn, "key": fingerprint}
        except Exception as error:  # reported, and the test fails on it
            line["error"] = type(error).__name__ + ": " + str(error)
        print(json.dumps(line), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
