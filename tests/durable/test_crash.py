#!/usr/bin/env python3
"""Nothing lost on a crash: `webhooks-local --data-dir` killed with SIGKILL at random points.

Starts the runner binary on a fresh data directory, registers ORCID-style subscribers and
two Members-style applications, then runs rounds of work, each ended by `kill -9` at a
random moment of one kind of work, and a restart on the same directory:

- capture:    record changes (PUT /local/records) in flight;
- flush:      a flush running (after it closed the window, while it enqueues);
- deliveries: deliveries in flight (the receiver answers some after a delay);
- sync:       a full sync of an application running.

At the end it restarts once more, flushes, waits for the queue to drain and the syncs to
complete, and checks, from what a receiver on 127.0.0.1 got:

1. the soak invariant: every (record, subscriber) pair got an acknowledged delivery issued
   after the record's last change (ORCID style: a message id of the last change's window
   or a later one; Members style: a message carrying the record's final state), or it is in
   the dead-letter queue (one callback always answers 500); every person of every sync
   that was started (202) was delivered or dead-lettered, and the sync completed;
2. in-flight deliveries came back: a request still unanswered when the runner was killed
   is sent again after the restart, no sooner than the visibility timeout after it;
3. nothing acknowledged is sent again unless the runner was killed after it was queued and
   before the repeat (at least once, and only for a crash).

Fixed seed unless asked (`--seed`), always printed; bounded in rounds and in time (a
watchdog ends the run). Prints `crash: N passed, M failed` last; exits 0 only when
nothing failed. The runner is always stopped.

    .venv/bin/python tests/durable/test_crash.py --runner target/debug/webhooks-local
    .venv/bin/python tests/durable/test_crash.py --rounds 60 --records 200 --budget 900   # longer
"""

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Failed, expect, free_port, runner_env, serve, stop_process  # noqa: E402

CLIENT, SECRET = "APP-CRASH", "crash-secret"
APPS = {"app-1": "key-1", "app-2": "key-2"}
SYNCED_APP = "app-2"
KINDS = ("capture", "flush", "deliveries", "sync")
VISIBILITY_S = 4.0
# A request is sent after its message was received from the queue; the gap (subscriber
# lookup, signing, connecting) stays well under this on a loaded machine.
RECEIVE_TO_REQUEST_S = 1.0


def orcid(n):
    """The n-th ORCID iD of the test, with its ISO 7064 MOD 11-2 check digit."""
    base = f"{9_000_000_000_000 + n:015d}"
    total = 0
    for c in base:
        total = (total + int(c)) * 2
    digit = (12 - total % 11) % 11
    full = base + ("X" if digit == 10 else str(digit))
    return "-".join(full[i : i + 4] for i in range(0, 16, 4))


def message_id(*parts):
    """The service's message id: SHA-256 over each part's length (u64, big-endian) and bytes;
    a window's notification (its second part the window) starts with the window, as 8 hex
    digits."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    digest = h.hexdigest()[:32]
    if parts[0] in ("callback", "application"):
        digest = f"{int(parts[1]) & 0xFFFFFFFF:08x}" + digest[8:]
    return "msg_" + digest


# --------------------------------------------------------------------------- receiver


class Receiver:
    """Answers 204 (a seeded tenth after 300 ms, so deliveries are in flight at a kill),
    500 on /fail/...; records every request with its arrival and answer times."""

    def __init__(self, seed):
        self.lock = threading.Lock()
        self.requests = []  # dicts: id, path, body, arrived, answered, status
        rng = random.Random(seed ^ 0x5EED)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                arrived = time.monotonic()
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                entry = {
                    "id": self.headers.get("webhook-id", ""),
                    "path": self.path,
                    "body": body,
                    "arrived": arrived,
                    "answered": None,
                    "status": None,
                }
                with outer.lock:
                    outer.requests.append(entry)
                    slow = rng.random() < 0.1
                status = 500 if self.path.startswith("/fail/") else 204
                if slow:
                    time.sleep(0.3)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    return  # the runner is gone: this answer never arrived
                with outer.lock:
                    entry["answered"] = time.monotonic()
                    entry["status"] = status

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's default listen backlog is 5: a flush's shards deliver at once,
            # and the connections past the fifth had their SYNs dropped and retried 1, 2, 4 s
            # later, past the runner's delivery timeout; the batch's acknowledged messages
            # then outlived their visibility timeout and were sent again with no crash.
            request_queue_size = 1024

            def handle_error(self, request, client_address):
                pass  # a connection the killed runner left half-way: expected here

        self.server = serve(Handler, server_class=Server)
        self.port = self.server.server_address[1]

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self):
        with self.lock:
            return [dict(r) for r in self.requests]

    def stop(self):
        self.server.shutdown()


# --------------------------------------------------------------------------- runner


class Runner:
    """The runner binary on the data directory; started again after each kill."""

    def __init__(self, binary, data_dir, port, logs):
        self.binary, self.data_dir, self.port, self.logs = binary, data_dir, port, logs
        self.proc = None
        self.starts = 0
        self.base = f"http://127.0.0.1:{port}"

    def start(self, deadline):
        self.starts += 1
        log = open(self.logs / f"runner-{self.starts}.log", "wb")
        args = [
            str(self.binary),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.port}",
            "--allow-insecure-callbacks",
            "--flush-interval", "1h",
            "--retry-base", "200ms",
            "--max-attempts", "4",
            "--delivery-timeout", "5s",
            "--visibility-timeout", f"{int(VISIBILITY_S)}s",
            "--client", f"{CLIENT}:{SECRET}",
            "--no-sample-record",
        ]  # fmt: skip
        for app, key in APPS.items():
            args += ["--application", f"{app}:{key}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=runner_env())
        log.close()
        while time.monotonic() < deadline:
            expect(self.proc.poll() is None, f"the runner exited with {self.proc.returncode}: {self.tail()}")
            try:
                if call(self.base, "GET", "/local/status", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise Failed(f"the runner did not answer in time: {self.tail()}")

    def kill(self):
        """SIGKILL: no shutdown, no last write."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return time.monotonic()

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)

    def tail(self, lines=30):
        text = (self.logs / f"runner-{self.starts}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def call(base, method, path, body=None, headers=None, timeout=10):
    data = None
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


# --------------------------------------------------------------------------- the scenario


class Scenario:
    def __init__(self, args, runner, receiver, deadline):
        self.args, self.runner, self.receiver, self.deadline = args, runner, receiver, deadline
        self.rng = random.Random(args.seed)
        self.records = [orcid(i) for i in range(args.records)]
        self.version = 0
        # version -> (record, window or None when its PUT got no answer, known window then)
        self.changes = {}
        self.syncs = []  # (sync id, started at)
        self.kills = []  # (kind, monotonic time)
        self.closed = {}  # window -> when the flush that closed it was sent
        self.flushed = {}  # window -> when a flush through it answered
        self.callbacks = {}  # record -> [callback URL]
        self.window = 1

    def base(self):
        return self.runner.base

    def api(self, method, path, body=None, headers=None, timeout=10):
        return call(self.base(), method, path, body, headers, timeout)

    def person(self, version):
        consents = {app: ["members.read_name"] for app in APPS}
        return {"firstName": f"v{version}", "consents": consents}

    def change(self, record):
        """One PUT; its answer's window, or None when the runner died under it."""
        self.version += 1
        version = self.version
        self.changes[version] = (record, None, self.window)
        try:
            status, body, _ = self.api("PUT", f"/local/records/{record}", self.person(version), timeout=5)
        except OSError:
            return None
        if status not in (200, 201):
            return None
        window = json.loads(body)["window"]
        self.changes[version] = (record, window, self.window)
        return window

    def status(self):
        status, body, _ = self.api("GET", "/local/status")
        expect(status == 200, f"status: {status}")
        return json.loads(body)

    def flush(self, timeout=30):
        self.closed.setdefault(self.window, time.monotonic())
        status, body, _ = self.api("POST", "/local/flush", timeout=timeout)
        expect(status == 200, f"flush: {status} {body[:200]!r}")
        answered = time.monotonic()
        for window in self.closed:
            self.flushed.setdefault(window, answered)
        self.window = self.status()["window"]
        return json.loads(body)

    def setup(self):
        self.runner.start(self.deadline)
        for record in self.records:
            expect(self.change(record) is not None, f"creating {record}")
        form = f"client_id={CLIENT}&client_secret={SECRET}&scope=/webhook&grant_type=client_credentials"
        status, body, _ = self.api(
            "POST", "/oauth/token", form, {"content-type": "application/x-www-form-urlencoded"}
        )
        expect(status == 200, f"token: {status} {body!r}")
        token = json.loads(body)["access_token"]
        for i, record in enumerate(self.records):
            paths = [f"/c{k}/r{i}" for k in range(2) if self.rng.random() < 0.7] or [f"/c0/r{i}"]
            if i % 10 == 0:
                paths.append(f"/fail/r{i}")
            self.callbacks[record] = [self.receiver.url(p) for p in paths]
            for url in self.callbacks[record]:
                encoded = urllib.request.quote(url, safe="")
                status, body, _ = self.api(
                    "PUT", f"/{record}/webhook/{encoded}", headers={"authorization": f"Bearer {token}"}
                )
                expect(status == 201, f"register {url}: {status} {body!r}")
        for app, key in APPS.items():
            status, body, _ = self.api(
                "PATCH",
                f"/application/{app}",
                {"webhook": {"url": self.receiver.url(f"/{app}"), "signingKey": "k", "requestIntervalMs": 0}},
                {"x-access-token": key},
            )
            expect(status == 200, f"webhook of {app}: {status} {body!r}")
        self.flush()

    def burst(self, n):
        for _ in range(n):
            self.change(self.rng.choice(self.records))

    def in_background(self, work):
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        return thread

    def round(self, kind):
        self.window = self.status()["window"]
        if kind == "capture":
            stop = threading.Event()

            def changes():
                while not stop.is_set():
                    self.change(self.rng.choice(self.records))

            workers = [self.in_background(changes) for _ in range(3)]
            time.sleep(self.rng.uniform(0.05, 0.3))
            killed = self.runner.kill()
            stop.set()
            for w in workers:
                w.join(10)
        elif kind == "flush":
            self.burst(self.rng.randint(20, 60))
            self.closed.setdefault(self.window, time.monotonic())

            def flush():
                try:
                    self.api("POST", "/local/flush", timeout=10)
                except OSError:
                    pass

            thread = self.in_background(flush)
            # The flush waits 200 ms after closing the window, then enqueues.
            time.sleep(self.rng.uniform(0.15, 0.45))
            killed = self.runner.kill()
            thread.join(10)
        elif kind == "deliveries":
            self.burst(self.rng.randint(30, 80))
            self.flush()
            time.sleep(self.rng.uniform(0.0, 0.4))
            killed = self.runner.kill()
        else:  # sync
            status, body, _ = self.api("POST", f"/application/{SYNCED_APP}/webhook/sync", headers={"x-access-token": APPS[SYNCED_APP]})
            expect(status == 202, f"sync: {status} {body!r}")
            self.syncs.append((json.loads(body)["syncId"], time.monotonic()))
            self.burst(self.rng.randint(0, 10))
            time.sleep(self.rng.uniform(0.0, 0.5))
            killed = self.runner.kill()
        self.kills.append((kind, killed))
        self.runner.start(self.deadline)
        self.window = self.status()["window"]

    def drain(self):
        self.flush()
        final_window = self.window
        end = min(self.deadline, time.monotonic() + 120)
        while time.monotonic() < end:
            queue = self.status()["queue"]
            syncs = [self.sync_state(sync_id) for sync_id, _ in self.syncs]
            if queue["visible"] + queue["in_flight"] == 0 and all(s == "completed" for s in syncs):
                return final_window
            time.sleep(0.2)
        raise Failed(f"not drained in time: {self.status()['queue']}, syncs {syncs}")

    def sync_state(self, sync_id):
        status, body, _ = self.api(
            "GET", f"/application/{SYNCED_APP}/webhook/sync/{sync_id}", headers={"x-access-token": APPS[SYNCED_APP]}
        )
        expect(status == 200, f"sync {sync_id}: {status} {body!r}")
        return json.loads(body)["state"]


# --------------------------------------------------------------------------- the checks


def acked(requests):
    return [r for r in requests if r["status"] == 204]


def delivered_person(request):
    envelope = json.loads(request["body"])
    persons = json.loads(base64.b64decode(envelope["message"]["data"]))
    return persons[0]


def check_pairs(s, requests, final_window, dead_ids):
    """Every (record, subscriber) pair: a delivery issued after the last change, or a dead letter."""
    acked_ids = {r["id"] for r in acked(requests)}
    by_id = {}
    for r in acked(requests):
        by_id.setdefault(r["id"], []).append(r)
    final_versions = {}
    for record in s.records:
        status, body, _ = s.api("GET", f"/local/records/{record}")
        expect(status == 200, f"GET {record}: {status}")
        final_versions[record] = int(json.loads(body)["firstName"][1:])
    lost, pairs = [], 0
    for record in s.records:
        version = final_versions[record]
        changed_record, window, known = s.changes[version]
        expect(changed_record == record, f"version {version} was written to {changed_record}, read on {record}")
        # A change whose PUT got no answer was captured in the window open then or later.
        floor = window if window is not None else known
        windows = range(floor, final_window + 1)
        for url in s.callbacks[record]:
            pairs += 1
            ids = {message_id("callback", str(w), record, url) for w in windows}
            if not (ids & acked_ids or ids & dead_ids):
                lost.append((record, url, floor))
        for app in APPS:
            pairs += 1
            ids = {message_id("application", str(w), app, record) for w in windows}
            fresh = [
                r for i in ids & acked_ids for r in by_id[i] if delivered_person(r).get("firstName") == f"v{version}"
            ]
            if not (fresh or ids & dead_ids):
                lost.append((record, app, floor))
    expect(not lost, f"{len(lost)} of {pairs} pairs without a delivery after their last change: {lost[:5]}")
    return pairs


def check_syncs(s, requests, dead_ids):
    acked_ids = {r["id"] for r in acked(requests)}
    missing = []
    for sync_id, _ in s.syncs:
        for record in s.records:
            mid = message_id("sync", sync_id, record)
            if mid not in acked_ids and mid not in dead_ids:
                missing.append((sync_id, record))
    expect(not missing, f"{len(missing)} sync persons never delivered: {missing[:5]}")
    return len(s.syncs) * len(s.records)


def check_in_flight(s, requests, dead_ids):
    """A request unanswered at a kill comes back after the restart, not before the timeout
    (unless that receive was its last and it went to the dead-letter queue). A message that
    may have been queued twice (a kill while it was being queued) is not timed: its other
    copy may be sent at any time."""
    spans = queueing_spans(s)
    kills = [killed for _, killed in s.kills]
    back, early, gone = 0, [], []
    for killed in kills:
        pending = [r for r in requests if r["arrived"] < killed and (r["answered"] is None or r["answered"] > killed)]
        for first in pending:
            later = [r for r in requests if r["id"] == first["id"] and r["arrived"] > killed]
            if not later:
                if first["id"] not in dead_ids:
                    gone.append((first["id"], first["path"], round(killed - first["arrived"], 3), first["answered"] and round(first["answered"] - killed, 3)))
                continue
            gap = min(r["arrived"] for r in later) - first["arrived"]
            queued_from, queued_to = spans.get(first["id"], (0.0, float("inf")))
            twice = any(queued_from <= k <= queued_to for k in kills)
            if gap < VISIBILITY_S - RECEIVE_TO_REQUEST_S and not twice:
                early.append((first["id"], round(gap, 2)))
            back += 1
    expect(
        not gone and not early,
        f"in flight at a kill and never sent again: {gone[:5]}; "
        f"sent again sooner than the visibility timeout ({VISIBILITY_S} s) after it: {early[:5]}",
    )
    return back


def check_dead(s, receiver, dead):
    """Dead letters: the failing callbacks' messages, and otherwise only messages queued
    before a kill (each receive counts, whether or not the runner lived to settle it: a
    message received and never settled through enough kills is dead-lettered, as on SQS)."""
    spans = queueing_spans(s)
    kills = [killed for _, killed in s.kills]
    failing = [job for job in dead if job["target"].get("callback", "").startswith(receiver.url("/fail/"))]
    others = [job for job in dead if job not in failing]
    unexplained = [
        job["id"] for job in others if not any(k >= spans.get(job["id"], (float("inf"),))[0] for k in kills)
    ]
    expect(not unexplained, f"dead-lettered with no failure and no kill to explain it: {unexplained[:5]}")
    return f"{len(failing)} of the failing callbacks, {len(others)} others after kills"


def queueing_spans(s):
    """When each message can have been put on the queue, as (from, to): a window's messages
    from the moment the flush closing it was sent until that flush answered (or forever,
    if it never did); a sync's from its start on (its steps enqueue pages as they go)."""
    spans = {}
    for window, closed in s.closed.items():
        span = (closed, s.flushed.get(window, float("inf")))
        for record, urls in s.callbacks.items():
            for url in urls:
                spans[message_id("callback", str(window), record, url)] = span
            for app in APPS:
                spans[message_id("application", str(window), app, record)] = span
    for sync_id, started in s.syncs:
        for record in s.records:
            spans[message_id("sync", sync_id, record)] = (started, float("inf"))
    return spans


def check_repeats(s, requests):
    """An acknowledged message is sent again only for a crash: the runner was killed after
    the previous acknowledged request (before it deleted the message), or while the message
    was being queued (a flush or sync step repeated after the restart queues it again)."""
    spans = queueing_spans(s)
    kills = [killed for _, killed in s.kills]
    previous, repeats, unexplained = {}, 0, []
    for r in sorted(acked(requests), key=lambda r: r["arrived"]):
        before = previous.get(r["id"])
        previous[r["id"]] = r
        if before is None:
            continue
        repeats += 1
        expect(r["id"] in spans, f"an acknowledged message the test never caused: {r['id']} {r['path']}")
        queued_from, queued_to = spans[r["id"]]
        if not any(before["arrived"] <= k <= r["arrived"] or queued_from <= k <= queued_to for k in kills):
            unexplained.append((r["id"], r["path"]))
    expect(
        not unexplained,
        f"{len(unexplained)} acknowledged messages sent again with no crash to explain it: {unexplained[:5]}",
    )
    return repeats


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", default="target/debug/webhooks-local")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CRASH_SEED", "16")))
    parser.add_argument("--rounds", type=int, default=12, help="kills (each kind in turn)")
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--budget", type=float, default=170.0, help="seconds before the watchdog ends the run")
    args = parser.parse_args()
    print(f"crash: seed {args.seed}, {args.rounds} kills, {args.records} records (replay with --seed {args.seed})")
    sys.stdout.flush()

    binary = Path(args.runner)
    if not binary.is_absolute():
        binary = (Path.cwd() / binary).resolve()
    work = Path(tempfile.mkdtemp(prefix="webhooks-crash-"))
    receiver = Receiver(args.seed)
    runner = Runner(binary, work / "data", free_port(), work)
    started = time.monotonic()
    deadline = started + args.budget
    passed, failed = 0, 0

    def watchdog():
        print(f"crash: watchdog: the run exceeded {args.budget:.0f} s; stopped")
        runner.stop()
        print("crash: 0 passed, 1 failed")
        sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(args.budget + 10, watchdog)
    timer.daemon = True
    timer.start()

    def check(name, fn):
        nonlocal passed, failed
        try:
            detail = fn()
            passed += 1
            print(f"  ok    {name}: {detail}")
        except Failed as e:
            failed += 1
            print(f"  FAIL  {name}: {e}")
        sys.stdout.flush()

    try:
        s = Scenario(args, runner, receiver, deadline)
        s.setup()
        for i in range(args.rounds):
            if time.monotonic() > deadline - 60:
                print(f"crash: stopping after {i} kills to leave time for the checks")
                break
            s.round(KINDS[i % len(KINDS)])
        final_window = s.drain()
        requests = receiver.snapshot()
        dead = s.status()["dead_letters"]
        dead_ids = {job["id"] for job in dead}
        kinds = {}
        for kind, _ in s.kills:
            kinds[kind] = kinds.get(kind, 0) + 1
        print(
            f"crash: {len(s.kills)} kills {kinds}, {runner.starts} starts, {s.version} changes, "
            f"{len(s.syncs)} syncs, {len(requests)} requests, {len(acked(requests))} acknowledged, "
            f"{len(dead)} dead letters, final window {final_window}, {time.monotonic() - started:.1f} s"
        )
        check("every kind of kill happened", lambda: expect(set(kinds) == set(KINDS) or args.rounds < 4, f"{kinds}") or kinds)
        check("every pair got a delivery after its last change, or a dead letter", lambda: f"{check_pairs(s, requests, final_window, dead_ids)} pairs")
        check("every started sync completed and delivered every person", lambda: f"{check_syncs(s, requests, dead_ids)} sync deliveries")
        check("only the failing callbacks were dead-lettered, or messages a kill left unsettled", lambda: check_dead(s, receiver, dead))
        check("in-flight deliveries came back after the visibility timeout", lambda: f"{check_in_flight(s, requests, dead_ids)} came back")
        check("an acknowledged message is sent again only after a crash", lambda: f"{check_repeats(s, requests)} repeats, each explained by a kill")
    except Failed as e:
        failed += 1
        print(f"  FAIL  scenario: {e}")
        try:
            print(runner.tail())
        except OSError:
            pass
    finally:
        timer.cancel()
        runner.stop()
        receiver.stop()
        if failed == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"crash: runner logs and data directory kept in {work}")
    print(f"crash: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
