#!/usr/bin/env python3
"""The web console (`GET /console`) in a real browser: Debian's Chromium driven by Playwright.

Starts the local runner and a webhook receiver on 127.0.0.1, then does what a person would
do in the page: an application owner signs in (and a wrong API key is refused clearly),
saves the webhook (an invalid URL shows the API's reason), rotates the secret, runs a test
whose delivery is verified here independently (hash with hmac, signature with the
`standardwebhooks` package, via tests/receiver/test_members.py's helpers), syncs data with
the progress bar reaching 100, sees a failing delivery, redelivers it and recovers the rest
after the receiver is fixed, re-enables a disabled endpoint; an ORCID-style client signs in,
registers, sees its webhook's attempts and unregisters. Hostile data (a person and URLs
holding `<img src=x onerror=alert(1)>`, quotes and `javascript:`) must stay text: any dialog
or injected element fails the run. Screenshots at 1280x800 and 390 px wide, no horizontal
overflow.

    .venv/bin/python tests/console/test_console.py --runner target/debug/webhooks-local

Prints one line per check and, last, `console: N passed, M failed`; exits 0 only when
nothing failed. Every wait is bounded and a watchdog ends the run after 150 s.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "receiver"))

from harness import Failed, Report, expect, free_port, runner_env, serve, stop_process  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from test_members import (  # noqa: E402 - the receiver test's independent verifiers
    Api,
    check_hash,
    check_signature,
    parse_delivery,
    persons_of,
)

APP, KEY = "app-1", "key-1"
CLIENT, CLIENT_SECRET = "APP-CONSOLETEST0001", "console-client-secret"
RECORD = "0000-0002-7465-2162"
SIGNING_KEY = "helloWorld"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
]
WAIT = 15.0  # the longest single wait, in seconds
BUDGET = 150.0  # the whole run
HOSTILE = "<img src=x onerror=alert(1)>"


def ids_in(post):
    """The personIDs a Members delivery carries (its data is base64 JSON); none if it is not one."""
    try:
        _, data = parse_delivery({**post, "body": post["body"].decode()})
        return {p.get("personID") for p in persons_of(data) if isinstance(p, dict)}
    except (Failed, UnicodeDecodeError):
        return set()


def person(pid, **fields):
    return {"personID": pid, "firstName": "Ada", "lastName": pid, "consents": {APP: ["members.read_name"]}, **fields}


class Receiver:
    """A webhook endpoint on 127.0.0.1 whose answer can be changed (204, 500, 410)."""

    def __init__(self):
        self.requests = []
        self.status = 204
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.status
                with receiver.cond:
                    receiver.requests.append(
                        {
                            "method": "POST",
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "answered": status,
                        }
                    )
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve(Handler)
        self.port = self.server.server_address[1]

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self):
        with self.cond:
            return len(self.requests)

    def wait_for(self, predicate, timeout=WAIT):
        """The requests that arrived after the start, once `predicate(requests)` holds."""
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.requests):
                left = end - time.monotonic()
                if left <= 0:
                    raise Failed(f"the receiver did not get what was expected within {timeout:.0f} s "
                                 f"({len(self.requests)} requests: {[r['path'] for r in self.requests][-5:]})")
                self.cond.wait(left)
            return list(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Runner:
    """The local runner on a free port; retries an hour apart, so only Redeliver and
    Recover send a failed message again within the test."""

    def __init__(self, binary, port):
        self.log = tempfile.NamedTemporaryFile(prefix="webhooks-console-", suffix=".log", delete=False)
        self.args = [
            str(binary), "--listen", f"127.0.0.1:{port}", "--allow-insecure-callbacks",
            "--flush-interval", "1h", "--retry-base", "1h",
            "--application", f"{APP}:{KEY}", "--client", f"{CLIENT}:{CLIENT_SECRET}",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=runner_env(), cwd=ROOT
        )

    def output(self):
        try:
            return Path(self.log.name).read_text(errors="replace")
        except OSError as e:
            return f"(cannot read {self.log.name}: {e})"

    def stop(self):
        stop_process(self.proc)
        self.log.close()


class Scenario:
    def __init__(self, report, api, receiver, runner, page, shots):
        self.report = report
        self.api = api
        self.receiver = receiver
        self.runner = runner
        self.page = page
        self.shots = shots
        self.secret = None
        self.dialogs = []
        page.on("dialog", self.on_dialog)

    def on_dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def check(self, name, fn):
        return self.report.check(name, fn)

    # ------------------------------------------------------------ helpers

    def put_person(self, p):
        r = self.api.call("PUT", f"/local/records/{p['personID']}", p)
        expect(r.status in (200, 201), str(r))

    def flush(self):
        r = self.api.call("POST", "/local/flush")
        expect(r.status == 200, str(r))

    def text(self, selector):
        return self.page.locator(selector).inner_text()

    def wait_text(self, selector, wanted, timeout=WAIT):
        """Waits until the element's text contains `wanted`; returns the text."""
        end = time.monotonic() + timeout
        got = ""
        while time.monotonic() < end:
            got = self.page.locator(selector).inner_text()
            if wanted in got:
                return got
            time.sleep(0.05)
        raise Failed(f"{selector} shows {got!r}, not {wanted!r}, after {timeout:.0f} s")

    def reloaded(self, table):
        """Waits until the console has finished reloading `table` (it is aria-busy while
        it loads; a click's handler marks it before the click returns)."""
        self.page.locator(f"{table}:not([aria-busy])").wait_for(state="attached", timeout=WAIT * 1000)

    def refresh(self, button, table):
        """Clicks a Refresh button and waits until the table it reloads is shown."""
        button.click()
        self.reloaded(table)

    def viewport(self, width, height):
        """Resizes the page and waits until the page itself sees the new width."""
        self.page.set_viewport_size({"width": width, "height": height})
        self.page.wait_for_function(f"() => window.innerWidth === {width}", timeout=WAIT * 1000)

    def delivery_row(self, message_id, wanted, failures_only=False, timeout=WAIT):
        """Clicks Refresh until the row of `message_id` shows `wanted` in Last status."""
        page = self.page
        if page.get_by_label("Failures only").is_checked() != failures_only:
            page.get_by_label("Failures only").set_checked(failures_only)
        row = page.locator(f'#deliveries tbody tr[data-message-id="{message_id}"]')
        end = time.monotonic() + timeout
        last = "(no row)"
        while time.monotonic() < end:
            self.refresh(page.locator("#refresh-deliveries"), "#deliveries")
            if row.count() == 1:
                last = row.locator("td.last").inner_text()
                if wanted in last:
                    return row
        raise Failed(f"row {message_id}: last status {last!r}, want {wanted!r}")

    def injected(self):
        """Elements hostile data would have created: any image, link, frame, a script
        other than the console's own, or an inline event handler anywhere."""
        return self.page.evaluate(
            """() => {
                const found = [];
                for (const el of document.querySelectorAll('img, a, iframe, object, embed, svg, script')) {
                    if (el.tagName === 'SCRIPT' && el.getAttribute('src') === '/console/console.js') continue;
                    found.push(el.outerHTML.slice(0, 120));
                }
                for (const el of document.querySelectorAll('*')) {
                    for (const a of el.attributes) if (/^on/i.test(a.name)) found.push(el.tagName + ' ' + a.name);
                }
                return found;
            }"""
        )

    def no_overflow(self):
        widths = self.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        expect(widths[0] <= widths[1], f"horizontal overflow: scrollWidth {widths[0]} > clientWidth {widths[1]}")
        return f"scrollWidth {widths[0]} <= {widths[1]}"

    def verified_delivery(self, post, secret=None):
        envelope, data = parse_delivery({**post, "body": post["body"].decode()})
        check_hash(envelope, data, SIGNING_KEY)
        check_signature({**post, "body": post["body"].decode()}, secret or self.secret)
        return envelope, persons_of(data)

    # ------------------------------------------------------------ the steps

    def serve(self, base):
        def headers():
            response = self.page.goto(base + "/console")
            expect(response.status == 200, f"GET /console -> {response.status}")
            h = response.headers
            csp = h.get("content-security-policy", "")
            expect("default-src 'self'" in csp and "unsafe" not in csp, f"CSP {csp!r}")
            expect(h.get("x-content-type-options") == "nosniff", f"x-content-type-options {h.get('x-content-type-options')!r}")
            expect(h.get("x-frame-options") == "DENY", f"x-frame-options {h.get('x-frame-options')!r}")
            expect(h.get("content-type", "").startswith("text/html"), f"content-type {h.get('content-type')!r}")
            for asset in ("/console/console.js", "/console/console.css"):
                r = self.api.call("GET", asset)
                expect(r.status == 200 and r.headers.get("content-security-policy") == csp, f"{asset}: {r.status}")
            return f"CSP {csp}"

        def banner():
            end = time.monotonic() + WAIT
            while time.monotonic() < end and "web console" not in self.runner.output():
                time.sleep(0.1)
            line = next((ln for ln in self.runner.output().splitlines() if "web console" in ln), "")
            expect(line.strip().endswith(base + "/console"), f"banner line {line!r}")
            return line.strip()

        def labelled():
            missing = self.page.evaluate(
                "() => [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).map(i => i.id)"
            )
            expect(not missing, f"inputs without a label: {missing}")
            self.page.keyboard.press("Tab")
            focused = self.page.evaluate("() => document.activeElement.id")
            expect(focused == "app-id", f"first Tab focuses {focused!r}, not the Application ID field")

        self.check("1.1 GET /console: 200, CSP default-src 'self' without unsafe-*, nosniff, DENY; assets too", headers)
        self.check("1.2 the runner's banner prints the console's URL", banner)
        self.check("1.3 every input has a label; Tab reaches Application ID first", labelled)

    def sign_in(self):
        page = self.page
        form = page.locator("#app-sign-in")

        def wrong_key():
            form.get_by_label("Application ID").fill(APP)
            form.get_by_label("API key").fill("not-the-key")
            form.get_by_role("button", name="Sign in").click()
            text = self.wait_text("#app-sign-in-error", "wrong")
            expect(page.locator("#application").is_hidden(), "the application view opened")
            return text

        def right_key():
            # By keyboard alone: Tab from Application ID to API key, type, Enter submits.
            form.get_by_label("Application ID").focus()
            page.keyboard.press("Tab")
            expect(page.evaluate("() => document.activeElement.id") == "app-key", "Tab does not reach API key")
            page.keyboard.press("Control+A")
            page.keyboard.type(KEY)
            page.keyboard.press("Enter")
            page.locator("#application").wait_for(state="visible", timeout=WAIT * 1000)
            expect(page.locator("#application-id").inner_text() == APP, "wrong heading")
            stored = page.evaluate("() => [document.cookie, location.href]")
            expect(stored[0] == "" and KEY not in stored[1], f"credentials in a cookie or the URL: {stored}")

        self.check("2.1 a wrong API key shows a clear error", wrong_key)
        self.check("2.2 Application ID + API key sign in by keyboard; no cookie, nothing in the URL", right_key)

    def configure(self):
        page = self.page
        form = page.locator("#webhook-form")

        def invalid():
            form.get_by_label("URL", exact=True).fill("not a url")
            form.get_by_role("button", name="Save").click()
            return self.wait_text("#webhook-url-error", "webhook.url")

        def save():
            form.get_by_label("URL", exact=True).fill(self.receiver.url("/hook"))
            form.get_by_label("Signing Key").fill(SIGNING_KEY)
            form.get_by_label("Request interval for data sync").fill("150")
            form.get_by_role("button", name="Save").click()
            self.wait_text("#webhook-form-result", "Saved")
            expect(page.locator("#webhook-url-error").inner_text() == "", "the URL error stayed")
            r = self.api.call("GET", f"/application/{APP}", token=KEY)
            webhook = (r.json or {}).get("webhook") or {}
            expect(webhook.get("url") == self.receiver.url("/hook"), f"stored url {webhook.get('url')!r}")
            expect(webhook.get("requestIntervalMs") == 150, f"stored interval {webhook.get('requestIntervalMs')!r}")
            return self.text("#webhook-key-help")

        self.check("3.1 Save with an invalid URL shows the API's reason next to URL", invalid)
        self.check("3.2 Save URL, Signing Key, Request interval for data sync -> stored", save)

    def rotate(self):
        page = self.page

        def rotate():
            page.get_by_role("button", name="Rotate secret").click()
            page.locator("#secret-box").wait_for(state="visible", timeout=WAIT * 1000)
            self.secret = page.locator("#new-secret").input_value()
            expect(self.secret.startswith("whsec_"), f"secret {self.secret!r}")
            page.get_by_role("button", name="Copy", exact=True).click()
            self.wait_text("#secret-result", "Copied")
            copied = page.evaluate("() => navigator.clipboard.readText()")
            expect(copied == self.secret, "the clipboard does not hold the secret")
            return "whsec_... shown once, copied"

        self.check("4.1 Rotate secret shows a whsec_ secret with a working Copy button", rotate)

    def run_test(self):
        page = self.page
        state = {}

        def click():
            state["before"] = self.receiver.count()
            page.get_by_role("button", name="Run Test").click()
            return self.wait_text("#test-result", "Acknowledged: status 204")

        def arrived():
            before = state["before"]
            posts = self.receiver.wait_for(lambda rs: len(rs) > before)[before:]
            expect(len(posts) == 1 and posts[0]["path"] == "/hook", f"{[p['path'] for p in posts]}")
            _, persons = self.verified_delivery(posts[0])
            expect(posts[0]["headers"]["webhook-id"] in self.text("#test-result"), "message id not shown")
            return f"hash and signature valid, {len(persons)} person(s)"

        self.check("5.1 Run Test shows status, latency and acknowledged", click)
        self.check("5.2 the test delivery arrived with a valid hash and signature (new secret)", arrived)

    def sync(self):
        page = self.page
        people = [person(f"p-sync-{i}") for i in range(10)]

        def run():
            for p in people:
                self.put_person(p)
            self.flush()  # the writes' own notifications, before the sync
            self.receiver.wait_for(lambda rs: sum(1 for r in rs if any(i.startswith("p-sync-") for i in ids_in(r))) >= len(people))
            state = {"before": self.receiver.count()}
            bar = page.get_by_role("progressbar")
            page.get_by_role("button", name="Sync Data").click()
            seen, counts = [], []
            end = time.monotonic() + WAIT
            while time.monotonic() < end:
                value = bar.get_attribute("aria-valuenow") if bar.is_visible() else None
                if value is not None and (not seen or seen[-1] != value):
                    seen.append(value)
                text = self.text("#sync-result")
                if text.startswith("Sync running") and text not in counts:
                    counts.append(text)
                if value == "100":
                    break
                time.sleep(0.03)
            expect(seen and seen[-1] == "100", f"aria-valuenow went {seen}")
            # 10 persons at 150 ms take at least 1.35 s: the page must have shown progress
            # (counts that changed) before the end, not only the start and the result.
            expect(len(counts) >= 2, f"progress shown while running: {counts}")
            text = self.wait_text("#sync-result", "Sync completed")
            posts = self.receiver.wait_for(lambda rs: len(rs) >= state["before"] + len(people))[state["before"]:]
            synced = set()
            for post in posts:
                _, persons = self.verified_delivery(post)
                synced.update(p["personID"] for p in persons)
            expect({p["personID"] for p in people} <= synced, f"synced {sorted(synced)}")
            return f"aria-valuenow {' -> '.join(seen)}; {len(counts)} running updates; {text}"

        self.check("6.1 Sync Data: progress bar (role=progressbar) reaches 100, counts shown, every person delivered", run)

    def failure_and_redelivery(self):
        page = self.page
        state = {}

        def fails():
            self.receiver.status = 500
            before = self.receiver.count()
            self.put_person(person("p-fail"))
            self.put_person(person("p-fail-2"))
            self.flush()
            posts = self.receiver.wait_for(lambda rs: len(rs) >= before + 2)[before:]
            for post in posts:
                envelope, persons = self.verified_delivery(post)
                state[persons[0]["personID"]] = post["headers"]["webhook-id"]
            expect({"p-fail", "p-fail-2"} <= set(state), f"got {state}")
            row = self.delivery_row(state["p-fail"], "500 failed", failures_only=True)
            expect(page.locator('#deliveries tbody tr.acked').count() == 0, "failures only shows acked rows")
            return f"{state['p-fail']}: {row.inner_text()!r}"

        def redeliver():
            self.receiver.status = 204
            message = state["p-fail"]
            before = self.receiver.count()
            row = page.locator(f'#deliveries tbody tr[data-message-id="{message}"]')
            row.get_by_role("button", name="Redeliver").click()
            self.wait_text("#deliveries-result", "queued")
            posts = self.receiver.wait_for(lambda rs: any(r["headers"].get("webhook-id") == message for r in rs[before:]))
            post = next(r for r in posts[before:] if r["headers"].get("webhook-id") == message)
            self.verified_delivery(post)
            self.delivery_row(message, "acked", failures_only=False)
            return f"{message} redelivered (same webhook-id, valid signature) and shown acked"

        def recover():
            message = state["p-fail-2"]
            since = (datetime.now() - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S")
            before = self.receiver.count()
            page.get_by_label("Recover failed since").fill(since)
            page.locator("#recover-form").get_by_role("button", name="Recover").click()
            text = self.wait_text("#recover-result", "queued again")
            posts = self.receiver.wait_for(lambda rs: any("p-fail-2" in ids_in(r) for r in rs[before:]))
            post = next(r for r in posts[before:] if "p-fail-2" in ids_in(r))
            self.verified_delivery(post)
            expect(post["answered"] == 204, "not acknowledged")
            return f"{text} ({message} failed before)"

        self.check("7.1 a failing receiver: the delivery is listed as failed (Failures only)", fails)
        self.check("7.2 receiver fixed: Redeliver sends it again and the row shows acked", redeliver)
        self.check("7.3 Recover failed since: the other failed message arrives", recover)

    def disabled(self):
        page = self.page

        def disable_and_re_enable():
            self.receiver.status = 410
            before = self.receiver.count()
            self.put_person(person("p-gone"))
            self.flush()
            self.receiver.wait_for(lambda rs: len(rs) > before)
            self.receiver.status = 204
            end = time.monotonic() + WAIT
            while time.monotonic() < end and page.locator("#re-enable").is_hidden():
                self.refresh(page.locator("#refresh-deliveries"), "#deliveries")
            expect(page.locator("#re-enable").is_visible(), "no Re-enable button")
            reason = self.text("#health-reason")
            expect("410" in reason, f"reason {reason!r}")
            page.get_by_role("button", name="Re-enable").click()
            self.wait_text("#health-status", "enabled")
            expect(page.locator("#re-enable").is_hidden(), "Re-enable still shown")
            return reason

        self.check("8.1 a 410 disables the endpoint: the page says why; Re-enable enables it", disable_and_re_enable)

    def hostile_application(self):
        page = self.page
        state = {}

        def person_as_text():
            p = person(
                "p-hostile",
                firstName=HOSTILE,
                lastName="\"'><script>alert(2)</script>",
                displayName="javascript:alert(3)",
            )
            before = self.receiver.count()
            self.put_person(p)
            self.flush()
            posts = self.receiver.wait_for(lambda rs: any("p-hostile" in ids_in(r) for r in rs[before:]))
            post = next(r for r in posts[before:] if "p-hostile" in ids_in(r))
            state["message"] = post["headers"]["webhook-id"]
            row = self.delivery_row(state["message"], "acked")
            row.get_by_role("button", name="Details").click()
            self.wait_text("#message-body", "p-hostile")
            found = self.injected()
            expect(not found and not self.dialogs, f"injected elements: {found}; dialogs: {self.dialogs}")
            body = self.text("#message-body")
            for text in (HOSTILE, "<script>alert(2)</script>", "javascript:alert(3)"):
                expect(text in body, f"{text!r} is not shown as text: {body!r}")

        def url_as_text():
            form = page.locator("#webhook-form")
            hostile_url = self.receiver.url("/hook?q=\"'><img/src=x/onerror=alert(4)>javascript:alert(5)")
            form.get_by_label("URL", exact=True).fill(hostile_url)
            form.get_by_role("button", name="Save").click()
            end = time.monotonic() + WAIT
            while time.monotonic() < end and not (self.text("#webhook-form-result") or self.text("#webhook-url-error")):
                time.sleep(0.05)
            outcome = self.text("#webhook-form-result") or self.text("#webhook-url-error")
            page.reload()
            page.locator("#application").wait_for(state="visible", timeout=WAIT * 1000)
            shown = page.locator("#webhook-url").input_value()
            form.get_by_label("URL", exact=True).fill("javascript:alert(6)")
            form.get_by_role("button", name="Save").click()
            error = self.wait_text("#webhook-url-error", "webhook.url")
            form.get_by_label("URL", exact=True).fill(self.receiver.url("/hook"))
            form.get_by_role("button", name="Save").click()
            self.wait_text("#webhook-form-result", "Saved")
            return f"hostile URL: {outcome!r}, shown as {shown!r}; javascript: URL: {error!r}"

        def nothing_ran():
            found = self.injected()
            expect(not found, f"injected elements: {found}")
            expect(not self.dialogs, f"dialogs opened: {self.dialogs}")
            return "no dialog, no injected element"

        def remove():
            form = page.locator("#webhook-form")
            form.get_by_label("URL", exact=True).fill("")
            form.get_by_role("button", name="Save").click()
            self.wait_text("#webhook-form-result", "removed")
            r = self.api.call("GET", f"/application/{APP}", token=KEY)
            url = ((r.json or {}).get("webhook") or {}).get("url")
            expect(url == "", f"stored url {url!r}")
            health = self.wait_text("#health-status", "No webhook")
            form.get_by_label("URL", exact=True).fill(self.receiver.url("/hook"))
            form.get_by_role("button", name="Save").click()
            self.wait_text("#webhook-form-result", "Saved.")
            return health

        self.check("9.1 a hostile person is shown as text in the message details", person_as_text)
        self.check("9.2 hostile and javascript: webhook URLs stay text (saved or refused)", url_as_text)
        self.check("9.3 application view: no dialog opened, no element injected", nothing_ran)
        self.check("9.4 Save with an empty URL removes the webhook (and a new URL sets it again)", remove)

    def screenshots_application(self):
        page = self.page

        def wide():
            self.viewport(1280, 800)
            self.refresh(page.locator("#refresh-deliveries"), "#deliveries")
            page.evaluate("() => window.scrollTo(0, 0)")
            overflow = self.no_overflow()
            page.screenshot(path=str(self.shots / "console-application.png"), full_page=False)
            return overflow

        def phone():
            self.viewport(390, 844)
            overflow = self.no_overflow()
            page.screenshot(path=str(self.shots / "console-application-phone.png"), full_page=True)
            self.viewport(1280, 800)
            return overflow

        self.check("10.1 application view at 1280x800: screenshot, no horizontal overflow", wide)
        self.check("10.2 application view at 390 px wide: screenshot, no horizontal overflow", phone)

    def client(self):
        page = self.page
        form = page.locator("#client-sign-in")
        register = page.locator("#register-form")
        state = {}

        def sign_out_and_wrong_secret():
            page.get_by_role("button", name="Sign out").click()
            page.locator("#sign-in").wait_for(state="visible", timeout=WAIT * 1000)
            stored = page.evaluate("() => sessionStorage.length")
            expect(stored == 0, f"sessionStorage keeps {stored} item(s) after Sign out")
            form.get_by_label("Client ID").fill(CLIENT)
            form.get_by_label("Client secret").fill("wrong")
            form.get_by_role("button", name="Sign in").click()
            return self.wait_text("#client-sign-in-error", "wrong")

        def sign_in():
            form.get_by_label("Client secret").fill(CLIENT_SECRET)
            form.get_by_role("button", name="Sign in").click()
            page.locator("#client").wait_for(state="visible", timeout=WAIT * 1000)
            self.wait_text("#client-title", CLIENT)

        def register_ok():
            register.get_by_label("Record ID").fill(RECORD)
            register.get_by_label("Callback URL").fill(self.receiver.url("/orcid/" + RECORD))
            register.get_by_role("button", name="Register").click()
            self.wait_text("#register-result", "Registered")
            rows = page.locator("#client-webhooks tbody tr")
            end = time.monotonic() + WAIT
            while time.monotonic() < end and rows.count() < 1:
                time.sleep(0.05)
            expect(rows.count() == 1, f"{rows.count()} rows")
            expect(self.receiver.url("/orcid/" + RECORD) in rows.first.inner_text(), rows.first.inner_text())

        def register_hostile():
            register.get_by_label("Record ID").fill(HOSTILE)
            register.get_by_label("Callback URL").fill(self.receiver.url("/x"))
            register.get_by_role("button", name="Register").click()
            end = time.monotonic() + WAIT
            while time.monotonic() < end and not self.text("#record-id-error"):
                time.sleep(0.05)
            record_error = self.text("#record-id-error")
            expect(record_error, "no error next to Record ID")
            state["hostile_callback"] = self.receiver.url("/cb/\"'><img/src=x/onerror=alert(7)>/javascript:alert(8)")
            register.get_by_label("Record ID").fill(RECORD)
            register.get_by_label("Callback URL").fill(state["hostile_callback"])
            register.get_by_role("button", name="Register").click()
            end = time.monotonic() + WAIT
            while time.monotonic() < end and not (self.text("#register-result") or self.text("#callback-url-error")):
                time.sleep(0.05)
            outcome = self.text("#register-result") or self.text("#callback-url-error")
            if "Registered" in outcome:
                # Registered: the table is reloaded and shows the callback as text.
                self.reloaded("#client-webhooks")
                table = self.text("#client-webhooks")
                expect(state["hostile_callback"] in table, "the hostile callback is not shown as text")
            return f"record: {record_error!r}; hostile callback: {outcome!r}"

        def attempts():
            before = self.receiver.count()
            self.put_person({"firstName": "Josiah"} | {"personID": RECORD})
            self.flush()
            posts = self.receiver.wait_for(lambda rs: any(r["path"] == "/orcid/" + RECORD for r in rs[before:]))
            post = next(r for r in posts[before:] if r["path"] == "/orcid/" + RECORD)
            expect(post["body"] == b"", f"ORCID callback body {post['body'][:80]!r}")
            row = page.locator("#client-webhooks tbody tr").filter(has_text="/orcid/")
            end = time.monotonic() + WAIT
            while time.monotonic() < end:
                self.refresh(page.locator("#refresh-webhooks"), "#client-webhooks")
                if "acked" in row.locator("td.attempts").inner_text():
                    return row.locator("td.attempts").inner_text()
            raise Failed(f"attempts cell {row.locator('td.attempts').inner_text()!r}")

        def disabled():
            # The receiver answers 410 Gone: both of the record's callbacks are disabled at once.
            self.receiver.status = 410
            before = self.receiver.count()
            self.put_person({"personID": RECORD, "firstName": "Josiah", "lastName": "Gone"})
            self.flush()
            self.receiver.wait_for(lambda rs: any(r["path"] == "/orcid/" + RECORD for r in rs[before:]))
            self.receiver.status = 204
            row = page.locator("#client-webhooks tbody tr").filter(has_text="/orcid/")
            end = time.monotonic() + WAIT
            while time.monotonic() < end and "disabled" not in row.locator("td.health").inner_text():
                self.refresh(page.locator("#refresh-webhooks"), "#client-webhooks")
            health = row.locator("td.health").inner_text()
            expect("disabled" in health and "410" in health, f"health {health!r}")
            row.get_by_role("button", name="Re-enable").click()
            end = time.monotonic() + WAIT
            while time.monotonic() < end and row.locator("td.health").inner_text() != "enabled":
                time.sleep(0.1)
            expect(row.locator("td.health").inner_text() == "enabled", f"health {row.locator('td.health').inner_text()!r}")
            return f"{health} -> enabled"

        def phone():
            self.viewport(390, 844)
            overflow = self.no_overflow()
            page.screenshot(path=str(self.shots / "console-client-phone.png"), full_page=True)
            self.viewport(1280, 800)
            overflow_wide = self.no_overflow()
            page.screenshot(path=str(self.shots / "console-client.png"), full_page=False)
            return f"{overflow}; at 1280: {overflow_wide}"

        def unregister():
            rows = page.locator("#client-webhooks tbody tr")
            end = time.monotonic() + WAIT
            while time.monotonic() < end and rows.count() > 0:
                left = rows.count()
                rows.first.get_by_role("button", name="Unregister").click()
                self.wait_text("#client-webhooks-result", "Unregistered")
                # The message may be the previous one's: the table losing a row is this one's.
                while time.monotonic() < end and rows.count() >= left:
                    time.sleep(0.05)
            expect(rows.count() == 0, f"{rows.count()} rows left")
            return "every webhook unregistered"

        def nothing_ran():
            found = self.injected()
            expect(not found, f"injected elements: {found}")
            expect(not self.dialogs, f"dialogs opened: {self.dialogs}")
            return "no dialog, no injected element"

        self.check("11.1 Sign out clears the session; a wrong client secret shows a clear error", sign_out_and_wrong_secret)
        self.check("11.2 Client ID + Client secret sign in (client_credentials exchange in the page)", sign_in)
        self.check("11.3 Record ID + Callback URL + Register -> listed with its health", register_ok)
        self.check("11.4 hostile Record ID refused next to the field; hostile callback stays text", register_hostile)
        self.check("11.5 a change is delivered to the callback; its attempts show acked", attempts)
        self.check("11.6 a 410 disables a callback: its health says why; Re-enable enables it", disabled)
        self.check("11.7 client view at 390 px and 1280x800: screenshots, no horizontal overflow", phone)
        self.check("11.8 client view: no dialog opened, no element injected", nothing_ran)
        self.check("11.9 Unregister removes every webhook", unregister)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", default="target/debug/webhooks-local", help="the webhooks-local binary")
    parser.add_argument("--screenshots", default="target/console-screenshots", help="where screenshots go")
    parser.add_argument("--verbose", action="store_true", help="print the runner's output even on success")
    args = parser.parse_args()

    report = Report("console")
    runner = receiver = None
    state = {"runner": None}

    def watchdog():
        with report.lock:
            if report.finished:
                return
            report.record(f"watchdog: the run exceeded {BUDGET:.0f} s; stopped", False)
            if state["runner"] is not None:
                state["runner"].proc.kill()
            report.finish()
            os._exit(1)

    def terminated(signum, frame):
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    timer = threading.Timer(BUDGET, watchdog)
    timer.daemon = True
    timer.start()
    try:
        binary = Path(args.runner).resolve()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            report.record("runner", False, f"{binary} is not an executable file (build it first)")
            return 1
        if not os.access(CHROMIUM, os.X_OK):
            report.record("chromium", False, f"{CHROMIUM} is missing (apt-get install -y chromium)")
            return 1
        shots = Path(args.screenshots)
        shots.mkdir(parents=True, exist_ok=True)
        receiver = Receiver()
        port = free_port()
        runner = state["runner"] = Runner(binary, port)
        base = f"http://127.0.0.1:{port}"
        api = Api(base, time.monotonic() + BUDGET)
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            expect(runner.proc.poll() is None, f"the runner exited with {runner.proc.poll()}")
            try:
                if api.call("GET", "/local/status", timeout=1).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
                page = context.new_page()
                page.set_default_timeout(WAIT * 1000)
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                s = Scenario(report, api, receiver, runner, page, shots)
                s.serve(base)
                s.sign_in()
                s.configure()
                s.rotate()
                s.run_test()
                s.sync()
                s.failure_and_redelivery()
                s.screenshots_application()
                s.disabled()
                s.hostile_application()
                s.client()
                report.check("12.1 no script error in the page", lambda: expect(not errors, f"{errors}"))
            finally:
                browser.close()
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
                    print("---- runner output ----")
                    for line in runner.output().splitlines()[-150:]:
                        print(f"runner| {line}")
                try:
                    os.unlink(runner.log.name)
                except OSError:
                    pass
            if receiver is not None:
                receiver.stop()
            report.finish()


if __name__ == "__main__":
    sys.exit(main())
