"""The AWS CLI v1 as a pod's job would use it: one `aws` process per call.

Usage: cli_consumer.py AWS SECONDS INTERVAL, where AWS is the path of the
`aws` program. Each call is a new process with the environment this one got,
so the CLI resolves its credentials afresh every time.
"""

import json
import subprocess
import sys
import time


def main(aws: str, seconds: float, interval: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = subprocess.run(
            [aws, "sts", "get-caller-identity", "--output", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            line = {"ok": True, "arn": json.loads(result.stdout)["Arn"]}
        else:
            line = {"ok": False, "error": result.stderr.strip()[-500:]}
        print(json.dumps(line), flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
