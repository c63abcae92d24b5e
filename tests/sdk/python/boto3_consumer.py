"""A long-lived boto3 client: see ../README.md.

Usage: boto3_consumer.py SECONDS INTERVAL
"""

import json
import sys
import time

import boto3


def main(seconds: float, interval: float) -> None:
    sts = boto3.session.Session().client("sts")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = {"ok": True, "arn": sts.get_caller_identity()["Arn"]}
        except Exception as error:  # reported; the test fails on it
            line = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(line), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
