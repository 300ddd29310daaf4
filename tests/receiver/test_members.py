#!/usr/bin/env python3
"""Members-style application webhooks, end to end, from the receiver's side.

Starts the local runner, configures app-1's webhook through the HTTP API, writes persons,
flushes, and checks what a receiver on 127.0.0.1 gets: the envelope, the scoped data, the
`attributes.hash` (recomputed here with hmac/hashlib) and the Standard Webhooks signature
(verified with the published `standardwebhooks` package, not with code of our own).
Written against the contract only, independently of the Rust code.

    .venv/bin/python tests/receiver/test_members.py --runner target/debug/webhooks-local

Prints one line per check and, last, `receiver: N passed, M failed`; exits 0 only when
nothing failed. Every wait is bounded (at most 15 s) and a watchdog ends the whole run
after 85 s. The runner is always stopped, pass or fail.
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Failed, Report, expect, free_port, runner_env, serve, stop_process  # noqa: E402

APP1, KEY1 = "app-1", "key-1"
APP2, KEY2 = "app-2", "key-2"
SIGNING_KEY = "helloWorld"

WAIT = 15.0  # the longest any single wait may take
BUDGET = 85.0  # the whole script, with room to stop the runner inside 90 s

PUBLISH_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NAME_FIELDS = ("firstName", "middleName", "lastName", "displayName")

# p-1 has every field; app-1 may read its name and email only.
P1 = {
    "personID": "p-1",
    "firstName": "Ada",
    "middleName": "King",
    "lastName": "Lovelace",
    "displayName": "Ada Lovelace",
    "email": "ada@example.org",
    "cellPhone": "+4740000001",
    "homePhone": "+4722000001",
    "currentAddress": {
        "address1": "Storgata 1",
        "postalCode": "0155",
        "city": "Oslo",
        "countryIso2Code": "NO",
    },
    "birthDate": "1815-12-10T00:00:00.000Z",
    "gender": "Female",
    "activeStatus": "Active",
    "churchID": 42,
    "church": {"churchID": 42, "name": "Oslo"},
    "consents": {APP1: ["members.read_name", "members.email"]},
}
P1_FOR_APP1 = {"personID", "lastChangedDate", *NAME_FIELDS, "email"}

# p-2 granted app-2 something, app-1 nothing: app-1 must never get it.
P2 = {
    "personID": "p-2",
    "firstName": "Charles",
    "lastName": "Babbage",
    "displayName": "Charles Babbage",
    "email": "charles@example.org",
    "consents": {APP2: ["members.email"]},
}


# --------------------------------------------------------------------------- receiver


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every request and answers 204."""

    def __init__(self):
        self.requests = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, status):
                body = self._read_body()
                with receiver.cond:
                    receiver.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):  # noqa: N802 - http.server's naming
                self._record(204)

            def do_GET(self):  # noqa: N802
                self._record(405)

            do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self):
        with self.cond:
            return len(self.requests)

    def wait_for(self, count, timeout):
        """Waits until at least `count` requests arrived; returns the requests so far."""
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < count:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- API client


class Response:
    def __init__(self, status, raw, headers):
        self.status = status
        self.raw = raw
        self.headers = headers
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    def __str__(self):
        text = self.raw.decode("utf-8", "replace")
        return f"HTTP {self.status} {text[:300]}"


class Api:
    def __init__(self, base, deadline):
        self.base = base
        self.deadline = deadline
        # No proxies: everything here is 127.0.0.1.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method, path, body=None, token=None, timeout=WAIT):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["x-access-token"] = token
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        timeout = max(0.5, min(timeout, self.deadline - time.monotonic()))
        try:
            with self.opener.open(request, timeout=timeout) as r:
                return Response(r.status, r.read(), r.headers)
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), e.headers)


# --------------------------------------------------------------------------- delivery checks


def b64decode_strict(text, what):
    """Standard alphabet, padded, canonical."""
    expect(isinstance(text, str) and text, f"{what} is not a non-empty string: {text!r}")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Failed(f"{what} is not standard padded base64: {e}") from None
    expect(base64.b64encode(decoded).decode() == text, f"{what} is not canonical padded base64")
    return decoded


def parse_delivery(post):
    """The envelope and the decoded data bytes of one POST; fails on a malformed envelope."""
    expect(post["method"] == "POST", f"method {post['method']}")
    try:
        envelope = json.loads(post["body"])
    except ValueError as e:
        raise Failed(f"body is not JSON: {e}: {post['body'][:200]!r}") from None
    expect(isinstance(envelope, dict) and isinstance(envelope.get("message"), dict), "no message object")
    data = b64decode_strict(envelope["message"].get("data"), "message.data")
    return envelope, data


def persons_of(data):
    try:
        persons = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Failed(f"data does not decode to UTF-8 JSON: {e}") from None
    expect(isinstance(persons, list), f"data is not a JSON array: {persons!r}")
    return persons


def check_hash(envelope, data, key=SIGNING_KEY):
    hash_text = envelope["message"].get("attributes", {}).get("hash")
    got = b64decode_strict(hash_text, "attributes.hash")
    want = hmac.new(key.encode("utf-8"), data, hashlib.sha256).digest()
    expect(hmac.compare_digest(got, want), f"hash {hash_text} != {base64.b64encode(want).decode()}")


def verify_signature(post, secret):
    """Standard Webhooks verification with the published library."""
    Webhook(secret).verify(post["body"], post["headers"], json_parse=False)


def check_signature(post, secret):
    try:
        verify_signature(post, secret)
    except WebhookVerificationError as e:
        raise Failed(
            f"standardwebhooks: {e} (webhook-id={post['headers'].get('webhook-id')!r}, "
            f"webhook-timestamp={post['headers'].get('webhook-timestamp')!r}, "
            f"webhook-signature={post['headers'].get('webhook-signature')!r})"
        ) from None


def check_p1_for_app1(person):
    expect(isinstance(person, dict), f"person is not an object: {person!r}")
    keys = set(person)
    expect(
        keys == P1_FOR_APP1,
        f"keys {sorted(keys)}; extra {sorted(keys - P1_FOR_APP1)}, missing {sorted(P1_FOR_APP1 - keys)}",
    )
    expect(person["personID"] == "p-1", f"personID {person['personID']!r}")
    for field in (*NAME_FIELDS, "email"):
        expect(person[field] == P1[field], f"{field} {person[field]!r} != {P1[field]!r}")
    expect(isinstance(person["lastChangedDate"], str) and person["lastChangedDate"], "empty lastChangedDate")


# --------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, binary, port):
        self.log = tempfile.NamedTemporaryFile(prefix="webhooks-local-", suffix=".log", delete=False)
        self.args = [
            str(binary),
            "--listen", f"127.0.0.1:{port}",
            "--allow-insecure-callbacks",
            "--flush-interval", "1h",
            "--retry-base", "1s",
            "--application", f"{APP1}:{KEY1}",
            "--application", f"{APP2}:{KEY2}",
            "--no-sample-record",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=runner_env(), cwd=ROOT
        )

    def stop(self):
        stop_process(self.proc)

    def output(self):
        try:
            return Path(self.log.name).read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log.name}: {e})"

    def cleanup(self):
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


# --------------------------------------------------------------------------- the scenario


class Scenario:
    def __init__(self, report, api, receiver, runner, deadline):
        self.report = report
        self.api = api
        self.receiver = receiver
        self.runner = runner
        self.deadline = deadline
        self.hook_url = receiver.url("/hook")
        self.secret = None  # the current Standard Webhooks secret
        self.previous_secret = None
        self.delivery = None  # the POST the flush produced

    def wait(self, seconds):
        return max(0.0, min(seconds, WAIT, self.deadline - time.monotonic()))

    def check(self, name, fn):
        return self.report.check(name, fn)

    # 1 ---------------------------------------------------------------------
    def start(self):
        def ready():
            end = time.monotonic() + self.wait(WAIT)
            last = "no answer"
            while time.monotonic() < end:
                rc = self.runner.proc.poll()
                expect(rc is None, f"the runner exited with status {rc}")
                try:
                    r = self.api.call("GET", "/local/status", timeout=1)
                    if r.status == 200:
                        return f"pid {self.runner.proc.pid}, {self.api.base}"
                    last = str(r)
                except OSError as e:
                    last = str(e)
                time.sleep(0.1)
            raise Failed(f"GET /local/status did not answer 200 within {WAIT:.0f} s ({last})")

        return self.check("1.1 runner starts (GET /local/status 200)", ready) is not None

    def auth(self):
        path = f"/application/{APP1}"

        def get_ok():
            r = self.api.call("GET", path, token=KEY1)
            expect(r.status == 200, str(r))
            expect(isinstance(r.json, dict) and r.json.get("id") == APP1, f"id is not {APP1!r}: {r}")
            expect("webhook" in r.json, f"no webhook field: {r}")
            expect(SIGNING_KEY not in r.raw.decode("utf-8", "replace"), "signing key echoed")

        def status_is(token, want):
            def run():
                r = self.api.call("GET", path, token=token)
                expect(r.status == want, f"want {want}, got {r}")

            return run

        self.check("1.2 GET /application/app-1 with key-1 -> 200", get_ok)
        self.check("1.3 GET /application/app-1 without x-access-token -> 401", status_is(None, 401))
        self.check("1.4 GET /application/app-1 with a wrong key -> 401", status_is("not-the-key", 401))
        self.check("1.5 GET /application/app-1 with app-2's key -> 403", status_is(KEY2, 403))

    # 2 ---------------------------------------------------------------------
    def configure(self):
        path = f"/application/{APP1}"
        webhook = {"url": self.hook_url, "signingKey": SIGNING_KEY, "requestIntervalMs": 0}

        def patch():
            r = self.api.call("PATCH", path, {"webhook": webhook}, token=KEY1)
            expect(r.status == 200, str(r))
            got = (r.json or {}).get("webhook") or {}
            expect(got.get("url") == self.hook_url, f"result.webhook.url {got.get('url')!r}: {r}")
            expect(got.get("requestIntervalMs") == 0, f"requestIntervalMs {got.get('requestIntervalMs')!r}")
            expect(SIGNING_KEY not in r.raw.decode("utf-8", "replace"), f"signing key echoed in full: {r}")

        def shows_masked():
            r = self.api.call("GET", path, token=KEY1)
            expect(r.status == 200, str(r))
            got = (r.json or {}).get("webhook") or {}
            expect(got.get("url") == self.hook_url, f"webhook.url {got.get('url')!r}")
            expect(got.get("requestIntervalMs") == 0, f"requestIntervalMs {got.get('requestIntervalMs')!r}")
            expect(SIGNING_KEY not in r.raw.decode("utf-8", "replace"), f"signing key shown in full: {r}")
            return f"signingKey shown as {got.get('signingKey')!r}"

        def invalid_url():
            r = self.api.call("PATCH", path, {"webhook": {"url": "not a url"}}, token=KEY1)
            expect(r.status == 400, f"want 400, got {r}")
            expect(
                isinstance(r.json, dict) and "error" in r.json and "error_description" in r.json,
                f"error body lacks error/error_description: {r}",
            )

        def unchanged():
            r = self.api.call("GET", path, token=KEY1)
            got = ((r.json or {}).get("webhook") or {}).get("url")
            expect(r.status == 200 and got == self.hook_url, f"webhook.url now {got!r}: {r}")

        self.check("2.1 PATCH url+signingKey+requestIntervalMs -> 200, result.webhook.url is the URL", patch)
        self.check("2.2 GET shows the URL and not the full signing key", shows_masked)
        self.check("2.3 PATCH url 'not a url' -> 400 {error, error_description}", invalid_url)
        self.check("2.4 the rejected PATCH left the webhook URL as it was", unchanged)

    # 3 ---------------------------------------------------------------------
    def rotate(self):
        path = f"/application/{APP1}/webhook/secret"

        def rotate_once():
            r = self.api.call("POST", path, token=KEY1)
            expect(r.status == 200, str(r))
            secret = (r.json or {}).get("secret")
            expect(isinstance(secret, str) and secret.startswith("whsec_"), f"secret {secret!r}")
            Webhook(secret)  # the package accepts it (base64 after the prefix, not empty)
            return secret

        def first():
            self.previous_secret = rotate_once()
            return "whsec_..."

        def second():
            self.secret = rotate_once()
            expect(self.secret != self.previous_secret, "the second rotation returned the same secret")
            return "whsec_..., a new one"

        def forbidden():
            r = self.api.call("POST", path, token=KEY2)
            expect(r.status == 403, f"want 403, got {r}")

        self.check("3.1 POST /application/app-1/webhook/secret -> 200 whsec_ secret", first)
        self.check("3.2 rotating again -> a different whsec_ secret", second)
        self.check("3.3 rotating app-1's secret with app-2's key -> 403", forbidden)

    # 4 ---------------------------------------------------------------------
    def put_person(self, person):
        r = self.api.call("PUT", f"/local/records/{person['personID']}", person)
        expect(r.status in (200, 201), str(r))

    def flush(self):
        r = self.api.call("POST", "/local/flush")
        expect(r.status == 200, str(r))
        expect(isinstance(r.json, dict), f"report is not a JSON object: {r}")
        expect(r.json.get("partial") is not True, f"partial flush: {r}")
        return f"report {json.dumps(r.json, sort_keys=True)}"

    def drained(self):
        """Waits until the runner's delivery queue holds nothing visible or in flight:
        every job the flush queued has been handled, so no further POST can come."""
        end = time.monotonic() + self.wait(WAIT)
        queue = {}
        while time.monotonic() < end:
            r = self.api.call("GET", "/local/status")
            expect(r.status == 200, str(r))
            queue = r.json["queue"]
            if queue["visible"] == 0 and queue["in_flight"] == 0:
                return
            time.sleep(0.05)
        raise Failed(f"the delivery queue did not drain within {WAIT:.0f} s: {queue}")

    def deliver(self):
        before = self.receiver.count()
        self.check("4.1 PUT /local/records/p-1 (all fields; app-1: name+email) -> 201/200", lambda: self.put_person(P1))
        self.check("4.2 PUT /local/records/p-2 (no consent for app-1) -> 201/200", lambda: self.put_person(P2))
        self.check("4.3 POST /local/flush -> 200", self.flush)

        def exactly_one():
            posts = self.receiver.wait_for(before + 1, self.wait(WAIT))
            expect(len(posts) > before, f"no POST within {WAIT:.0f} s")
            self.drained()  # a second POST (p-2, a duplicate) would have been sent by now
            posts = self.receiver.wait_for(0, 0)[before:]
            self.delivery = posts[0]
            expect(len(posts) == 1, f"{len(posts)} requests: {[describe(p) for p in posts]}")
            expect(posts[0]["path"] == "/hook", f"path {posts[0]['path']!r}")

        self.check("4.4 exactly one POST reaches app-1's URL (within 15 s, counted once the queue drained)", exactly_one)

    # 5 ---------------------------------------------------------------------
    def verify(self):
        post = self.delivery

        def need():
            expect(post is not None, "no delivery to verify")
            return post

        def content_type():
            ctype = need()["headers"].get("content-type", "")
            expect(ctype.split(";")[0].strip().lower() == "application/json", f"Content-Type {ctype!r}")

        def envelope_keys():
            envelope, _ = parse_delivery(need())
            expect(set(envelope) == {"message", "subscription"}, f"top-level keys {sorted(envelope)}")
            message = envelope["message"]
            want = {"attributes", "data", "messageId", "message_id", "publishTime", "publish_time"}
            expect(set(message) == want, f"message keys {sorted(message)}")
            expect(isinstance(message["attributes"], dict), f"attributes {message['attributes']!r}")
            expect(set(message["attributes"]) == {"hash"}, f"attributes keys {sorted(message['attributes'])}")

        def message_id():
            envelope, _ = parse_delivery(need())
            m = envelope["message"]
            header = post["headers"].get("webhook-id")
            expect(isinstance(m["messageId"], str) and m["messageId"], f"messageId {m['messageId']!r}")
            expect(m["messageId"] == m["message_id"] == header, f"{m['messageId']!r}, {m['message_id']!r}, {header!r}")
            return f"id {header}"

        def publish_time():
            envelope, _ = parse_delivery(need())
            m = envelope["message"]
            t = m["publishTime"]
            expect(t == m["publish_time"], f"publishTime {t!r} != publish_time {m['publish_time']!r}")
            expect(isinstance(t, str) and PUBLISH_TIME.match(t), f"publishTime {t!r} is not RFC 3339 UTC with ms")
            when = datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            skew = abs(datetime.now(timezone.utc) - when)
            expect(skew < timedelta(minutes=5), f"publishTime {t} is {skew} away from now")
            return t

        def subscription():
            envelope, _ = parse_delivery(need())
            expect(envelope["subscription"] == APP1, f"subscription {envelope['subscription']!r}")

        def data_is_p1():
            _, data = parse_delivery(need())
            persons = persons_of(data)
            expect(len(persons) == 1, f"{len(persons)} persons: {persons!r}")
            check_p1_for_app1(persons[0])
            return f"keys {sorted(persons[0])}"

        def hash_matches():
            envelope, data = parse_delivery(need())
            check_hash(envelope, data)

        def signature():
            need()
            expect(self.secret, "no secret from 3.2")
            check_signature(post, self.secret)

        def wrong_secret():
            need()
            wrong = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            try:
                verify_signature(post, wrong)
            except WebhookVerificationError:
                return
            raise Failed("a random secret verified the signature too")

        def previous_secret():
            need()
            expect(self.previous_secret, "no secret from 3.1")
            check_signature(post, self.previous_secret)

        self.check("5.1 Content-Type is application/json", content_type)
        self.check("5.2 envelope keys are exactly as specified", envelope_keys)
        self.check("5.3 messageId == message_id == webhook-id header", message_id)
        self.check("5.4 publishTime == publish_time, RFC 3339 UTC with milliseconds", publish_time)
        self.check("5.5 subscription is app-1", subscription)
        self.check("5.6 data: padded base64 of a JSON array with p-1 only, scoped to name+email", data_is_p1)
        self.check("5.7 attributes.hash == base64 HMAC-SHA256(signingKey, decoded data)", hash_matches)
        self.check("5.8 standardwebhooks verifies webhook-signature with the current secret", signature)
        self.check("5.9 standardwebhooks rejects the signature under a wrong secret", wrong_secret)
        self.check("5.10 the previous secret still verifies (24 h rotation overlap)", previous_secret)

    # 6 ---------------------------------------------------------------------
    def test_endpoint(self):
        path = f"/application/{APP1}/webhook/test"
        state = {}

        def run_test(body, key):
            def run():
                state[key] = None
                before = self.receiver.count()
                r = self.api.call("POST", path, body, token=KEY1)
                expect(r.status == 200, str(r))
                j = r.json if isinstance(r.json, dict) else {}
                expect(j.get("acknowledged") is True, f"acknowledged {j.get('acknowledged')!r}: {r}")
                expect(j.get("status") == 204, f"status {j.get('status')!r}: {r}")
                expect(j.get("error") is None, f"error {j.get('error')!r}")
                state[key] = (before, j)
                return f"latencyMs {j.get('latencyMs')!r}, messageId {j.get('messageId')!r}"

            return run

        def delivered(key, check_persons):
            def run():
                expect(state.get(key), "the test call failed")
                before, outcome = state[key]
                posts = self.receiver.wait_for(before + 1, self.wait(WAIT))[before:]
                expect(len(posts) == 1, f"{len(posts)} requests: {[describe(p) for p in posts]}")
                post = posts[0]
                envelope, data = parse_delivery(post)
                expect(envelope.get("subscription") == APP1, f"subscription {envelope.get('subscription')!r}")
                header = post["headers"].get("webhook-id")
                expect(envelope["message"].get("messageId") == header, "messageId != webhook-id")
                if outcome.get("messageId") is not None:
                    expect(outcome["messageId"] == header, f"response messageId {outcome['messageId']!r} != {header!r}")
                check_hash(envelope, data)
                check_signature(post, self.secret)
                persons = persons_of(data)
                expect(len(persons) == 1, f"{len(persons)} persons: {persons!r}")
                return check_persons(persons[0])

            return run

        def sample(person):
            expect(isinstance(person, dict), f"person {person!r}")
            for field in ("personID", "lastChangedDate"):
                expect(isinstance(person.get(field), str) and person[field], f"{field} {person.get(field)!r}")
            return f"sample {person['personID']!r}, keys {sorted(person)}"

        def no_consent():
            before = self.receiver.count()
            r = self.api.call("POST", path, {"personId": "p-2"}, token=KEY1)
            expect(r.status == 404, f"want 404, got {r}")
            self.drained()
            posts = self.receiver.wait_for(0, 0)[before:]
            expect(not posts, f"the receiver got {[describe(p) for p in posts]}")

        self.check(
            "6.1 POST webhook/test {personId: p-1} -> 200, acknowledged, status 204",
            run_test({"personId": "p-1"}, "p1"),
        )
        self.check(
            "6.2 ...one POST arrived: p-1 scoped to name+email, hash and signature ok",
            delivered("p1", check_p1_for_app1),
        )
        self.check("6.3 POST webhook/test without a body -> 200, acknowledged, status 204", run_test(None, "sample"))
        self.check(
            "6.4 ...one POST arrived: one sample person, hash and signature ok",
            delivered("sample", sample),
        )
        self.check("6.5 POST webhook/test {personId: p-2} (no consent) -> 404, nothing delivered", no_consent)

    # 7 ---------------------------------------------------------------------
    def remove(self):
        path = f"/application/{APP1}"

        def patch():
            r = self.api.call("PATCH", path, {"webhook": {"url": ""}}, token=KEY1)
            expect(r.status == 200, str(r))

        def gone():
            r = self.api.call("GET", path, token=KEY1)
            expect(r.status == 200, str(r))
            webhook = (r.json or {}).get("webhook")
            expect(webhook is None or webhook.get("url") in (None, ""), f"webhook {webhook!r}")
            return f"webhook {json.dumps(webhook)}"

        def silent():
            before = self.receiver.count()
            self.put_person({**P1, "firstName": "Augusta"})
            self.flush()
            self.drained()
            posts = self.receiver.wait_for(0, 0)[before:]
            expect(not posts, f"the receiver got {[describe(p) for p in posts]}")

        self.check("7.1 PATCH url '' -> 200", patch)
        self.check("7.2 GET shows no webhook URL", gone)
        self.check("7.3 a change to p-1 + flush delivers nothing to app-1 (counted once the queue drained)", silent)


def describe(post):
    return f"{post['method']} {post['path']} {post['body'][:120]!r}"


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", default="target/debug/webhooks-local", help="the webhooks-local binary")
    parser.add_argument("--verbose", action="store_true", help="print the runner's output even on success")
    args = parser.parse_args()

    report = Report("receiver")
    started = time.monotonic()
    deadline = started + BUDGET
    runner = None
    receiver = None
    state = {"runner": None}

    def watchdog():
        # The whole run is bounded: stop the runner, say so, exit non-zero. Holding the
        # report's lock keeps the main thread from printing or cleaning up meanwhile.
        with report.lock:
            if report.finished:
                return
            report.record(f"watchdog: the run exceeded {BUDGET:.0f} s; stopped", False)
            r = state["runner"]
            if r is not None:
                try:
                    r.stop()
                except Exception:  # noqa: BLE001
                    r.proc.kill()
                print_log(r)
                r.cleanup()
            report.finish()
            sys.stdout.flush()
            os._exit(1)

    def terminated(signum, frame):
        raise SystemExit(f"signal {signum}")  # unwinds through `finally`, which stops the runner

    signal.signal(signal.SIGTERM, terminated)
    timer = threading.Timer(BUDGET, watchdog)
    timer.daemon = True
    timer.start()
    try:
        binary = Path(args.runner)
        if not binary.is_absolute():
            binary = (Path.cwd() / binary).resolve()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            report.record("1.1 runner starts", False, f"{binary} is not an executable file (build it first)")
            return 1
        receiver = Receiver()
        port = free_port()
        runner = state["runner"] = Runner(binary, port)
        api = Api(f"http://127.0.0.1:{port}", deadline)
        scenario = Scenario(report, api, receiver, runner, deadline)
        if scenario.start():
            scenario.auth()
            scenario.configure()
            scenario.rotate()
            scenario.deliver()
            scenario.verify()
            scenario.test_endpoint()
            scenario.remove()
        else:
            report.record("2-7 not run", False, "the runner did not start")
        return 0 if report.failed == 0 else 1
    except (KeyboardInterrupt, SystemExit) as e:
        report.record("interrupted", False, str(e) or type(e).__name__)
        return 1
    except Exception as e:  # noqa: BLE001 - a crash of the script is a failure, reported as such
        report.record("script error", False, f"{type(e).__name__}: {e}")
        return 1
    finally:
        timer.cancel()
        with report.lock:
            if runner is not None:
                runner.stop()
                if report.failed or args.verbose:
                    print_log(runner)
                runner.cleanup()
            if receiver is not None:
                receiver.stop()
            report.finish()


def print_log(runner):
    print(f"---- runner output ({' '.join(runner.args)}; exit {runner.proc.poll()}) ----", flush=True)
    for line in runner.output().splitlines()[-200:]:
        print(f"runner| {line}")
    print("---- end of runner output ----", flush=True)


if __name__ == "__main__":
    sys.exit(main())
