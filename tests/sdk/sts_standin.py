"""A strict STS in front of moto, for the SDK matrix.

Usage: sts_standin.py MOTO_URL LIFETIME_SECONDS STRICT_SECONDS

Listens on a free port of 127.0.0.1 and prints it on the first line. Every
request goes on to moto, except that:

- an AssumeRole answer is given an expiration LIFETIME_SECONDS after now (a
  stand-in may grant less than was asked, as STS does with role chaining),
  and the stand-in remembers it for the access key it issued;
- any other request must be signed with an access key that this stand-in
  issued and that expires more than STRICT_SECONDS from now. Otherwise it is
  refused with 403 ExpiredToken, as real STS would refuse an expired one,
  and the refusal is recorded.

Each AssumeRole and AssumeRoleWithWebIdentity is recorded with its action,
role, session name, session tags, DurationSeconds, the fingerprint of the
access key that signed it (empty when unsigned), the caller's app id, the
time, and, for a web identity, the token itself, so that a test can check
whose identity reached STS and which process called.
Each other request is counted per caller (the `app/<id>` that an SDK adds to its
User-Agent from AWS_SDK_UA_APP_ID) and per access key. GET /_standin/report
returns the counts; keys appear only as short SHA-256 fingerprints. GET
/_standin/throttle?seconds=N answers every AssumeRole of the next N seconds
with Throttling, as STS does when an account's rate is exceeded;
/_standin/down?seconds=N with 503 ServiceUnavailable; /_standin/slow?seconds=N&delay=S
makes each AssumeRole of the next N seconds take S seconds (the report's
`inflight` counts those being answered); /_standin/expire_at?at=EPOCH gives
every AssumeRole answer that expiration (but at least 7 minutes) while it is
in the future (0 stops it), so that all the credentials minted meanwhile fall
due together, as in a refresh wave.

ECR's GetAuthorizationToken goes on to moto like any other request (signed
with a key this stand-in issued); /_standin/ecr_lifetime?seconds=N makes its
tokens expire N seconds after now (0: moto's own 12 hours), and
/_standin/ecr_down?seconds=N answers it, for the next N seconds, with 503
ServerException. The report's `ecr` counts the tokens given.
"""

import datetime
import hashlib
import http.server
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

MOTO, LIFETIME, STRICT = sys.argv[1].rstrip("/"), int(sys.argv[2]), int(sys.argv[3])
# The address to listen on: 127.0.0.1 unless a fourth argument names another
# (a node's pods reach the host at an address of their network).
HOST = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"

LOCK = threading.Lock()
ISSUED = {}  # access key -> expiry (epoch seconds), in the order issued
ORDER = []  # fingerprints of issued keys, oldest first
CALLS = {}  # app -> fingerprint -> count
SEEN = {}  # app -> fingerprints in the order first used
REJECTED = []  # {app, key, reason}
ASSUME_ROLE = [0]
THROTTLE_UNTIL = [0.0]  # while now < this, every AssumeRole is answered Throttling
DOWN_UNTIL = [0.0]  # while now < this, every AssumeRole is answered 503
SLOW = [0.0, 0.0]  # [until, seconds]: while now < until, each AssumeRole waits that long
INFLIGHT = [0]  # AssumeRole calls being answered
EXPIRE_AT = [0]  # while in the future, the expiration of every AssumeRole answer
ECR_LIFETIME = [0]  # seconds an ECR token lasts; 0: as moto says
ECR_DOWN_UNTIL = [0.0]  # while now < this, GetAuthorizationToken is answered 503
ECR_TOKENS = [0]  # tokens given
SESSIONS = []  # {action, role, session, tags, duration, signer, token} of each AssumeRole*, as asked


def fingerprint(key):
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/xml"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/_standin/throttle?seconds="):
            with LOCK:
                THROTTLE_UNTIL[0] = time.time() + float(self.path.split("=", 1)[1])
            self.reply(200, "", "text/plain")
            return
        if self.path.startswith("/_standin/down?seconds="):
            with LOCK:
                DOWN_UNTIL[0] = time.time() + float(self.path.split("=", 1)[1])
            self.reply(200, "", "text/plain")
            return
        if self.path.startswith("/_standin/slow?"):
            query = urllib.parse.parse_qs(self.path.split("?", 1)[1])
            with LOCK:
                SLOW[0] = time.time() + float(query["seconds"][0])
                SLOW[1] = float(query["delay"][0])
            self.reply(200, "", "text/plain")
            return
        if self.path.startswith("/_standin/expire_at?at="):
            with LOCK:
                EXPIRE_AT[0] = int(self.path.split("=", 1)[1])
            self.reply(200, "", "text/plain")
            return
        if self.path.startswith("/_standin/ecr_lifetime?seconds="):
            with LOCK:
                ECR_LIFETIME[0] = int(self.path.split("=", 1)[1])
            self.reply(200, "", "text/plain")
            return
        if self.path.startswith("/_standin/ecr_down?seconds="):
            with LOCK:
                ECR_DOWN_UNTIL[0] = time.time() + float(self.path.split("=", 1)[1])
            self.reply(200, "", "text/plain")
            return
        if self.path != "/_standin/report":
            self.reply(404, "")
            return
        with LOCK:
            report = {
                "assume_role": ASSUME_ROLE[0],
                "issued": list(ORDER),
                "calls": CALLS,
                "seen": SEEN,
                "rejected": REJECTED,
                "sessions": SESSIONS,
                "inflight": INFLIGHT[0],
                "ecr": ECR_TOKENS[0],
            }
            self.reply(200, json.dumps(report), "application/json")

    def forward(self, body):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        request = urllib.request.Request(MOTO + self.path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read(), answer.headers.get("Content-Type", "text/xml")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "text/xml")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        action = urllib.parse.parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        if action in ("AssumeRole", "AssumeRoleWithWebIdentity"):
            self.assume_role(body, action)
            return
        agent = " ".join(self.headers.get(h, "") for h in ("User-Agent", "X-Amz-User-Agent"))
        app = (re.search(r"app/([A-Za-z0-9._-]+)", agent) or [None, "unknown"])[1]
        match = re.search(r"Credential=([A-Z0-9]+)/", self.headers.get("Authorization", ""))
        key = match.group(1) if match else ""
        now = time.time()
        with LOCK:
            expires = ISSUED.get(key)
            reason = None
            if expires is None:
                reason = "not a key this STS issued"
            elif expires - now <= STRICT:
                reason = f"expires in {expires - now:.0f} s"
            if reason:
                REJECTED.append({"app": app, "key": fingerprint(key), "action": action, "reason": reason})
            else:
                fp = fingerprint(key)
                CALLS.setdefault(app, {}).setdefault(fp, 0)
                CALLS[app][fp] += 1
                if fp not in SEEN.setdefault(app, []):
                    SEEN[app].append(fp)
        if reason:
            self.reply(
                403,
                "<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code>"
                f"<Message>The security token included in the request is refused: {reason}</Message>"
                "</Error><RequestId>standin</RequestId></ErrorResponse>",
            )
            return
        if self.headers.get("X-Amz-Target", "").endswith(".GetAuthorizationToken"):
            self.ecr_token(body)
            return
        self.reply(*self.forward(body))

    def ecr_token(self, body):
        if time.time() < ECR_DOWN_UNTIL[0]:
            self.reply(
                503,
                json.dumps({"__type": "ServerException", "message": "ECR is down (stand-in)"}),
                "application/x-amz-json-1.1",
            )
            return
        status, answer, content_type = self.forward(body)
        if status == 200:
            data = json.loads(answer)
            with LOCK:
                lifetime = ECR_LIFETIME[0]
                ECR_TOKENS[0] += 1
            if lifetime:
                for item in data.get("authorizationData", []):
                    item["expiresAt"] = time.time() + lifetime
            answer = json.dumps(data).encode()
        self.reply(status, answer, content_type)

    def assume_role(self, body, action):
        params = urllib.parse.parse_qs(body.decode(errors="replace"))
        one = lambda name: params.get(name, [""])[0]
        tags, n = {}, 1
        while f"Tags.member.{n}.Key" in params:
            tags[one(f"Tags.member.{n}.Key")] = one(f"Tags.member.{n}.Value")
            n += 1
        signer = re.search(r"Credential=([A-Z0-9]+)/", self.headers.get("Authorization", ""))
        agent = " ".join(self.headers.get(h, "") for h in ("User-Agent", "X-Amz-User-Agent"))
        app = (re.search(r"app/([A-Za-z0-9._-]+)", agent) or [None, "unknown"])[1]
        with LOCK:
            SESSIONS.append(
                {
                    "action": action,
                    "role": one("RoleArn"),
                    "session": one("RoleSessionName"),
                    "tags": tags,
                    "duration": one("DurationSeconds"),
                    "signer": fingerprint(signer.group(1)) if signer else "",
                    "token": one("WebIdentityToken"),
                    "app": app,
                    "at": time.time(),
                    "throttled": time.time() < THROTTLE_UNTIL[0],
                }
            )
            throttled = time.time() < THROTTLE_UNTIL[0]
        now = time.time()
        if now < DOWN_UNTIL[0]:
            self.reply(
                503,
                "<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
                "<Message>Service unavailable</Message></Error><RequestId>standin</RequestId></ErrorResponse>",
            )
            return
        if now < SLOW[0]:
            with LOCK:
                INFLIGHT[0] += 1
            time.sleep(SLOW[1])
            with LOCK:
                INFLIGHT[0] -= 1
        if throttled:
            self.reply(
                400,
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                "<Message>Rate exceeded</Message></Error><RequestId>standin</RequestId></ErrorResponse>",
            )
            return
        status, answer, content_type = self.forward(body)
        text = answer.decode()
        key = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", text)
        if status == 200 and key:
            expires = int(time.time()) + LIFETIME
            with LOCK:
                # Never closer than the operator's floor and two minutes:
                # credentials due the moment they are issued would be asked
                # for again and again.
                if EXPIRE_AT[0] > time.time():
                    expires = max(EXPIRE_AT[0], int(time.time()) + 420)
            text = re.sub(r"<Expiration>[^<]+</Expiration>", f"<Expiration>{rfc3339(expires)}</Expiration>", text)
            with LOCK:
                ASSUME_ROLE[0] += 1
                ISSUED[key.group(1)] = expires
                ORDER.append(fingerprint(key.group(1)))
        self.reply(status, text, content_type)


def main():
    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
