#!/usr/bin/env python3
"""The built functions in the Lambda runtime emulator, against moto: run by scripts/sam-local.

`sam local invoke` runs every file in events/ through its function from `.aws-sam/build`
(the `sam build` artifacts), and `sam local start-api` serves the seed's curl flow. The
functions reach a moto server and a receiver that this script starts on the docker bridge
gateway address (inside a container 127.0.0.1 is the container). Each invocation is a test:
its printed response is checked (status code, body, no `errorType`: `sam local invoke`
exits 0 even when the function crashed) and its effect is read back from moto.

The events are used as they are, except for what only the live run can know: the client
secret the admin tool printed, the access token the token call returned, the receipt
handles and bodies of the messages the flush really enqueued, and callback URLs pointing at
the receiver (the files' https://nowhere2.com is not reachable from here).

Prints `PASS name` / `FAIL name: why` per invocation and, last,
`sam-local: N passed, M failed`; exits 0 only when nothing failed. Every wait is bounded.
"""

import argparse
import copy
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
from cfnlint.decode import cfn_yaml
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Failed, describe, expect, free_port, serve, stop_process  # noqa: E402

EVENTS = ROOT / "events"
BUILT_TEMPLATE = ROOT / ".aws-sam" / "build" / "template.yaml"
REGION = "eu-west-1"
CLIENT_ID = "APP-NPXKK6HFN6TJ4YYI"  # the seed's client (events/token.json)
RECORD = "0000-0002-7465-2162"  # the seed's record (every event names it)
SEED_CALLBACK = f"https://nowhere2.com/{RECORD}/updated"
FLUSH_INTERVAL_MINUTES = 1  # the shortest window, so the flush test waits at most a minute
FLUSH_GRACE_SECONDS = 1
# The flush's failed first attempts come back this long after it; the delivery function's
# failed second attempt is hidden twice as long, past the test's own receive (RECEIVE_VISIBILITY).
RETRY_BASE_SECONDS = 45
INVOKE_TIMEOUT = 240  # one `sam local invoke` under qemu, image build included
CONTAINER_CONNECTION_TIMEOUT = 120  # the emulator's start under qemu (SAM's default is 20 s)
RECEIVE_VISIBILITY = 30  # the test's own receive; an invocation takes about 10 s


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        """Runs fn; an exception is a failed test. Returns fn's value (None on failure)."""
        started = time.monotonic()
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - any error is a failed test, never a crash
            self.failed += 1
            print(f"FAIL {name}: {describe(e)}", flush=True)
            return None
        self.passed += 1
        print(f"PASS {name} ({time.monotonic() - started:.1f} s)", flush=True)
        return value


class Receiver:
    """A webhook receiver on the bridge: /ok/... answers 500 to its first POST (the flush's
    first attempt) and 204 after that, /fail/... always answers 500."""

    def __init__(self, host):
        self.posts = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver.lock:
                    again = any(p["path"] == self.path for p in receiver.posts)
                    receiver.posts.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                self.send_response(204 if again and self.path.startswith("/ok/") else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = serve(Handler, host)

    def url(self, path):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def posts_to(self, prefix):
        with self.lock:
            return [p for p in self.posts if p["path"].startswith(prefix)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def expect_signed_posts(receiver, secret, count, when):
    """Each of the two callbacks got `count` POSTs, the last one signed with `secret` (checked
    by the independent `standardwebhooks` verifier)."""
    for prefix in ("/ok/", "/fail/"):
        posts = receiver.posts_to(prefix)
        expect(len(posts) == count, f"{prefix}: {len(posts)} POSTs {when}, expected {count}")
        try:
            Webhook(secret).verify(posts[-1]["body"], posts[-1]["headers"], json_parse=False)
        except WebhookVerificationError as e:
            raise Failed(f"{prefix}: the last POST {when} does not verify: {e}") from None


class Moto:
    """moto server on the bridge gateway address, and boto3 clients for it."""

    def __init__(self, host, log_path):
        self.port = free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", host, "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (see {log_path})") from None
                time.sleep(0.1)
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.dynamodb = session.client("dynamodb", endpoint_url=self.endpoint)
        self.sqs = session.client("sqs", endpoint_url=self.endpoint)

    def stop(self):
        stop_process(self.process, 10)
        self.log.close()


def create_resources(moto):
    """Every table and queue of template.yaml, from the template itself (keys, streams,
    visibility, redrive); returns {logical id: table name or queue URL}."""
    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    parameters = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    resources = template["Resources"]
    created, arns = {}, {}
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        extra = {}
        if "StreamSpecification" in props:
            extra["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": props["StreamSpecification"]["StreamViewType"],
            }
        name = f"sam-local-{logical}"
        moto.dynamodb.create_table(
            TableName=name,
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            BillingMode="PAY_PER_REQUEST",
            **extra,
        )
        created[logical] = name
    queues = [k for k, r in resources.items() if r["Type"] == "AWS::SQS::Queue"]
    # Dead-letter queues first: a redrive policy names its target's ARN.
    queues.sort(key=lambda k: "RedrivePolicy" in resources[k]["Properties"])
    for logical in queues:
        props = resources[logical]["Properties"]
        attributes = {}
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(props["VisibilityTimeout"])
        if "RedrivePolicy" in props:
            redrive = props["RedrivePolicy"]
            target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            count = redrive["maxReceiveCount"]
            count = parameters[count["Ref"]] if isinstance(count, dict) else str(count)
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arns[target], "maxReceiveCount": count}
            )
        url = moto.sqs.create_queue(QueueName=f"sam-local-{logical}", Attributes=attributes)[
            "QueueUrl"
        ]
        arns[logical] = moto.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        created[logical] = url
    return created, template["Globals"]["Function"]["Environment"]["Variables"]


def function_environment(moto, created, declared):
    """Values for the variables the template declares (SAM passes no others): each one that
    names a table or queue gets the moto one, the rest keep the template's value, but for
    these settings of the local run."""

    def resource(value):
        if isinstance(value, dict) and "Ref" in value:
            return created.get(value["Ref"])
        if isinstance(value, dict) and "Fn::If" in value:
            return resource(value["Fn::If"][1])
        return None

    environment = {k: resource(v) for k, v in declared.items() if resource(v) is not None}
    environment.update(
        {
            "AWS_ENDPOINT_URL": moto.endpoint,
            # The receiver is plain http on a private address, which deployed functions refuse.
            "ALLOW_INSECURE_CALLBACKS": "true",
            "FLUSH_INTERVAL_MINUTES": str(FLUSH_INTERVAL_MINUTES),
            "FLUSH_GRACE_SECONDS": str(FLUSH_GRACE_SECONDS),
            "RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
            "RUST_LOG": "INFO",
        }
    )
    unknown = set(environment) - set(declared)
    if unknown:
        raise RuntimeError(f"the template does not declare {sorted(unknown)}: SAM would drop them")
    return environment


def admin_create_client(admin, moto, names):
    """The seed's client, made by the operator's tool; returns (client secret, webhook secret)."""
    env = dict(os.environ)
    env.update(
        {
            "SERVICE_TABLE": names["ServiceTable"],
            "AWS_ENDPOINT_URL": moto.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    out = subprocess.run(
        [admin, "clients", "create", "--id", CLIENT_ID],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    secret = re.search(r"client_secret:\s*(\S+)", out)
    webhook = re.search(r"webhook_secret:\s*(\S+)", out)
    if not secret or not webhook:
        raise RuntimeError(f"webhooks-admin printed no secrets:\n{out}")
    return secret.group(1), webhook.group(1)


def put_seed_person(moto, names):
    """The person the events change (registration needs the record to exist)."""
    moto.dynamodb.put_item(
        TableName=names["RecordsTable"],
        Item={
            "id": {"S": RECORD},
            "firstName": {"S": "Josiah"},
            "lastName": {"S": "Carberry"},
            "lastChangedDate": {"S": "2026-11-25T11:58:03.120Z"},
        },
    )


def load_event(name):
    return json.loads((EVENTS / name).read_text())


def sha256_hex(text):
    return hashlib.sha256(text.encode()).hexdigest()


class Sam:
    def __init__(self, sam, work, environment):
        self.sam = sam
        self.work = Path(work)
        self.env_file = self.work / "env-vars.json"
        self.env_file.write_text(json.dumps({"Parameters": environment}))
        self.process_env = dict(os.environ)
        self.process_env.update(
            {
                "SAM_CLI_TELEMETRY": "0",
                "SAM_SKIP_PULL_IMAGE": "1",
                # Handed to the functions by SAM as their credentials; moto takes any.
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                # How long SAM waits for the emulator in a new container to listen (default
                # 20 s): under qemu on a loaded 2-core machine it has taken longer than that.
                "SAM_CLI_CONTAINER_CONNECTION_TIMEOUT": str(CONTAINER_CONNECTION_TIMEOUT),
            }
        )

    def invoke(self, function, event, label):
        """`sam local invoke`; returns the response the function printed, as JSON."""
        path = self.work / f"event-{label}.json"
        path.write_text(json.dumps(event))
        command = [
            self.sam, "local", "invoke", function,
            "--template", str(BUILT_TEMPLATE),
            "--event", str(path),
            "--env-vars", str(self.env_file),
            "--region", REGION,
            "--skip-pull-image",
        ]  # fmt: skip
        log = self.work / f"invoke-{label}.log"
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=self.process_env,
                capture_output=True,
                text=True,
                timeout=INVOKE_TIMEOUT,
            )
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            log.write_text(stderr)
            raise Failed(f"no answer within {INVOKE_TIMEOUT} s: {tail(stderr)}") from None
        log.write_text(done.stderr + "\n--- stdout\n" + done.stdout)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        expect(done.returncode == 0, f"sam exited {done.returncode}: {tail(done.stderr)}")
        expect(lines, f"no response printed: {tail(done.stderr)}")
        try:
            response = json.loads(lines[-1])
        except json.JSONDecodeError:
            raise Failed(f"the response is not JSON: {lines[-1][:300]!r}") from None
        expect(
            not (isinstance(response, dict) and "errorType" in response),
            f"the function failed: {response}; log: {tail(done.stderr)}",
        )
        return response

    def start_api(self, port, log_path):
        log = open(log_path, "w")
        process = subprocess.Popen(
            [
                self.sam, "local", "start-api",
                "--template", str(BUILT_TEMPLATE),
                "--env-vars", str(self.env_file),
                "--region", REGION,
                "--host", "127.0.0.1",
                "--port", str(port),
                "--skip-pull-image",
                # One container, started with the API and reused: per-request containers
                # each race the emulator's start (under qemu it once took a second invoke
                # of the same request and crashed with a nil pointer: a 502 not ours).
                "--warm-containers", "EAGER",
            ],  # fmt: skip
            cwd=ROOT,
            env=self.process_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return process, log


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def api_response(response, status):
    expect(isinstance(response, dict), f"not an HTTP API response: {response!r}")
    expect(
        response.get("statusCode") == status,
        f"statusCode {response.get('statusCode')}, expected {status}; body {response.get('body')!r}",
    )
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    return headers, response.get("body") or ""


def with_bearer(event, token):
    event = copy.deepcopy(event)
    event["headers"]["authorization"] = f"Bearer {token}"
    return event


def with_callback(event, callback):
    """register.json or unregister.json for another callback URL (percent-encoded, as sent)."""
    event = copy.deepcopy(event)
    encoded = urllib.parse.quote(callback, safe="")
    event["rawPath"] = f"/{RECORD}/webhook/{encoded}"
    event["requestContext"]["http"]["path"] = f"/{RECORD}/webhook/{callback}"
    return event


def subscription_item(moto, names, callback):
    return moto.dynamodb.get_item(
        TableName=names["ServiceTable"],
        Key={"pk": {"S": f"SUB#{RECORD}"}, "sk": {"S": f"CALLBACK#{sha256_hex(callback)}"}},
        ConsistentRead=True,
    ).get("Item")


def pending_entries(moto, names):
    items = moto.dynamodb.scan(TableName=names["ServiceTable"], ConsistentRead=True)["Items"]
    return [i for i in items if i["pk"]["S"].startswith("PENDING#")]


def pending_records(item):
    """The record ids of a pending item: PENDING#<window>#<shard> holds a batch's ids."""
    return {r["S"] for r in item.get("records", {}).get("L", []) if "S" in r}


def run(args, report):
    work = Path(args.work)
    receiver = Receiver(args.gateway)
    moto = Moto(args.gateway, work / "moto.log")
    api = None
    try:
        names, declared = create_resources(moto)
        secret, webhook_secret = admin_create_client(args.admin, moto, names)
        put_seed_person(moto, names)
        sam = Sam(args.sam, work, function_environment(moto, names, declared))
        print(
            f"moto {moto.endpoint}, receiver {receiver.url('/')}, "
            f"client {CLIENT_ID} made by webhooks-admin",
            flush=True,
        )

        # ---- RegistrationFunction: token, register, unregister (events as sent by curl)
        def token():
            event = load_event("token.json")
            form = urllib.parse.parse_qs(event["body"])
            form["client_secret"] = [secret]
            event["body"] = urllib.parse.urlencode(form, doseq=True)
            headers, body = api_response(
                sam.invoke("RegistrationFunction", event, "token"), 200
            )
            access = json.loads(body)["access_token"]
            item = moto.dynamodb.get_item(
                TableName=names["ServiceTable"],
                Key={"pk": {"S": f"TOKEN#{sha256_hex(access)}"}, "sk": {"S": "TOKEN"}},
                ConsistentRead=True,
            ).get("Item")
            expect(item is not None, "no token item (TOKEN#sha256) in the service table")
            expect(access not in json.dumps(item), "the token itself is stored, not its hash")
            return access

        access = report.check("sam local invoke RegistrationFunction -e events/token.json", token)
        if access is None:
            raise Failed("no access token: the API invocations cannot run")

        def register():
            event = with_bearer(load_event("register.json"), access)
            headers, _ = api_response(sam.invoke("RegistrationFunction", event, "register"), 201)
            expect("location" in headers, f"no Location header: {headers}")
            expect(
                headers["location"].endswith(event["rawPath"]),
                f"Location {headers['location']} does not end with {event['rawPath']}",
            )
            expect(subscription_item(moto, names, SEED_CALLBACK), "no subscription item")

        report.check("sam local invoke RegistrationFunction -e events/register.json", register)

        def unregister():
            event = with_bearer(load_event("unregister.json"), access)
            api_response(sam.invoke("RegistrationFunction", event, "unregister"), 204)
            expect(
                subscription_item(moto, names, SEED_CALLBACK) is None,
                "the subscription is still stored",
            )

        report.check("sam local invoke RegistrationFunction -e events/unregister.json", unregister)

        # Two receiver callbacks for the same record: one acknowledges, one fails.
        ok_callback = receiver.url(f"/ok/{RECORD}")
        fail_callback = receiver.url(f"/fail/{RECORD}")
        for kind, callback in (("ok", ok_callback), ("fail", fail_callback)):

            def register_receiver(callback=callback, kind=kind):
                event = with_callback(with_bearer(load_event("register.json"), access), callback)
                api_response(
                    sam.invoke("RegistrationFunction", event, f"register-{kind}"), 201
                )
                expect(subscription_item(moto, names, callback), "no subscription item")

            report.check(
                f"sam local invoke RegistrationFunction -e events/register.json"
                f" (callback {callback})",
                register_receiver,
            )

        # ---- ChangeCaptureFunction: each stream event marks its records pending
        for name in ("stream-insert.json", "stream-modify.json", "stream-remove.json"):

            def change(name=name):
                event = load_event(name)
                changed = {r["dynamodb"]["Keys"]["id"]["S"] for r in event["Records"]}
                # Entries an earlier event left for the same records would hide a miss.
                for item in pending_entries(moto, names):
                    if pending_records(item) & changed:
                        moto.dynamodb.delete_item(
                            TableName=names["ServiceTable"],
                            Key={"pk": item["pk"], "sk": item["sk"]},
                        )
                response = sam.invoke("ChangeCaptureFunction", event, name)
                expect(
                    response == {"batchItemFailures": []},
                    f"expected no batch item failures, got {response}",
                )
                pending = set().union(*(pending_records(e) for e in pending_entries(moto, names)))
                expect(changed <= pending, f"pending {sorted(pending)}, changed {sorted(changed)}")

            report.check(f"sam local invoke ChangeCaptureFunction -e events/{name}", change)

        # ---- the HTTP API on the emulator's own event builder (the seed's curl flow)
        api_port = free_port("127.0.0.1")
        api, api_log = sam.start_api(api_port, work / "start-api.log")
        base = f"http://127.0.0.1:{api_port}"
        curl_flow(report, base, secret, api, work)
        stop_process(api, 20)
        api_log.close()
        api = None

        # ---- FlushFunction: the closed window's pending entry -> one job per subscriber
        entries = pending_entries(moto, names)
        pending_window = max((int(e["pk"]["S"].split("#")[1]) for e in entries), default=0)
        flushable = (pending_window + 1) * FLUSH_INTERVAL_MINUTES * 60 + FLUSH_GRACE_SECONDS + 1
        wait = flushable - time.time()
        if wait > 0:
            print(f"waiting {wait:.0f} s for window {pending_window} to close", flush=True)
            time.sleep(min(wait, FLUSH_INTERVAL_MINUTES * 60 + FLUSH_GRACE_SECONDS + 2))

        def flush():
            response = sam.invoke("FlushFunction", load_event("schedule.json"), "schedule")
            expect(isinstance(response, dict), f"not a flush report: {response!r}")
            # Only the seed's record has subscribers: the two receiver callbacks, whose first
            # attempts the flush made itself (a quiet window), both refused.
            expect(
                (response.get("jobs"), response.get("first_attempts")) == (2, 2),
                f"expected 2 jobs (two callbacks), both attempted by the flush, got {response}",
            )
            expect_signed_posts(receiver, webhook_secret, 1, "from the flush")
            expect(response.get("records") == 2, f"expected 2 pending records read: {response}")
            # Pending entries expire by TTL; the flush's cursor says their window is done.
            cursor = moto.dynamodb.get_item(
                TableName=names["ServiceTable"],
                Key={"pk": {"S": "FLUSH"}, "sk": {"S": "CURSOR"}},
                ConsistentRead=True,
            ).get("Item")
            expect(cursor is not None, "no flush cursor stored")
            done_through = int(cursor["window"]["N"]) - 1
            expect(
                done_through >= pending_window,
                f"cursor {cursor}, pending entries in window {pending_window}",
            )
            # Each refused job waits on the queue for its retry delay.
            attributes = moto.sqs.get_queue_attributes(
                QueueUrl=names["DeliveryQueue"],
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
            )["Attributes"]
            expect(
                attributes
                == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesDelayed": "2"},
                f"delivery queue: {attributes}",
            )

        report.check("sam local invoke FlushFunction -e events/schedule.json", flush)

        # ---- FlushFunction with a schedule's constant input (FlushWorkers > 1): the shards
        # it names go on from the whole flush's cursor, so nothing comes again.
        def flush_shards():
            response = sam.invoke("FlushFunction", load_event("flush-shards.json"), "flush-shards")
            expect(isinstance(response, dict), f"not a flush report: {response!r}")
            expect(
                (response.get("jobs"), response.get("lease_held")) == (0, False),
                f"expected no job again and its own lease: {response}",
            )

        report.check("sam local invoke FlushFunction -e events/flush-shards.json", flush_shards)

        # ---- DeliveryFunction: the jobs the flush queued for their second attempt, in
        # sqs-batch.json's shape, once their retry delay is over
        def deliver():
            received = []
            give_up = time.monotonic() + RETRY_BASE_SECONDS + 60
            while len(received) < 2 and time.monotonic() < give_up:
                received += moto.sqs.receive_message(
                    QueueUrl=names["DeliveryQueue"],
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=RECEIVE_VISIBILITY,
                    WaitTimeSeconds=5,
                    AttributeNames=["All"],
                ).get("Messages", [])
            received_at = time.monotonic()
            expect(len(received) == 2, f"received {len(received)} messages, expected 2")
            made = [json.loads(m["Body"]).get("attempts_made") for m in received]
            expect(made == [1, 1], f"attempts made before the queue: {made}, expected the flush's 1")
            event = load_event("sqs-batch.json")
            template = event["Records"][0]
            arn = moto.sqs.get_queue_attributes(
                QueueUrl=names["DeliveryQueue"], AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            records = []
            by_callback = {}
            for message in received:
                record = copy.deepcopy(template)
                record.update(
                    messageId=message["MessageId"],
                    receiptHandle=message["ReceiptHandle"],
                    body=message["Body"],
                    md5OfBody=message["MD5OfBody"],
                    eventSourceARN=arn,
                    awsRegion=REGION,
                )
                record["attributes"] = message["Attributes"]
                records.append(record)
                target = json.loads(message["Body"])["target"]
                by_callback[target["callback"]] = message["MessageId"]
            event["Records"] = records
            expect(
                set(by_callback) == {ok_callback, fail_callback},
                f"jobs for {sorted(by_callback)}",
            )
            response = sam.invoke("DeliveryFunction", event, "sqs-batch")
            failures = [f["itemIdentifier"] for f in response.get("batchItemFailures", [])]
            ok_id, fail_id = by_callback[ok_callback], by_callback[fail_callback]
            expect(
                failures == [fail_id],
                f"batch item failures {failures}, expected only the failing callback's ({fail_id})",
            )
            expect_signed_posts(receiver, webhook_secret, 2, "after the delivery function's")
            # Once the receive's visibility timeout is over, the acknowledged message is back
            # (deleting it is Lambda's part, done below); the failed one must stay hidden for
            # its retry delay (about RETRY_BASE_SECONDS), which the function set.
            time.sleep(max(0.0, received_at + RECEIVE_VISIBILITY + 1 - time.monotonic()))
            again = moto.sqs.receive_message(
                QueueUrl=names["DeliveryQueue"], MaxNumberOfMessages=10, VisibilityTimeout=5
            ).get("Messages", [])
            expect(
                [m["MessageId"] for m in again] == [ok_id],
                f"visible after {RECEIVE_VISIBILITY} s: {[m['MessageId'] for m in again]}, "
                f"expected only the acknowledged {ok_id} (the failed one hidden for its retry)",
            )
            moto.sqs.delete_message(
                QueueUrl=names["DeliveryQueue"], ReceiptHandle=again[0]["ReceiptHandle"]
            )
            attributes = moto.sqs.get_queue_attributes(
                QueueUrl=names["DeliveryQueue"],
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            expect(
                attributes
                == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "1"},
                f"delivery queue after Lambda's delete: {attributes}",
            )

        report.check("sam local invoke DeliveryFunction -e events/sqs-batch.json", deliver)
    finally:
        if api is not None:
            stop_process(api, 20)
        moto.stop()
        receiver.stop()


def curl(*args):
    done = subprocess.run(
        ["curl", "-sS", "--max-time", str(INVOKE_TIMEOUT), "-D", "-", *args],
        capture_output=True,
        text=True,
        timeout=INVOKE_TIMEOUT + 10,
    )
    expect(done.returncode == 0, f"curl failed: {done.stderr.strip()}")
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1])
    headers = {}
    for line in head.splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def curl_flow(report, base, secret, api, work):
    """The seed's curl commands against `sam local start-api`."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=1):
                break
        except OSError:
            if api.poll() is not None or time.monotonic() > deadline:
                report.check(
                    "sam local start-api",
                    lambda: expect(False, f"did not start: {tail((work / 'start-api.log').read_text())}"),
                )
                return
            time.sleep(0.2)

    def token():
        status, _, body = curl(
            "-H", "Accept: application/json",
            "-d", f"client_id={CLIENT_ID}", "-d", f"client_secret={secret}",
            "-d", "scope=/webhook", "-d", "grant_type=client_credentials",
            f"{base}/oauth/token",
        )  # fmt: skip
        expect(status == 200, f"status {status}: {body}")
        return json.loads(body)["access_token"]

    access = report.check("sam local start-api: POST /oauth/token -> 200", token)
    if access is None:
        return
    path = f"/{RECORD}/webhook/{urllib.parse.quote(SEED_CALLBACK, safe='')}"

    def put(expected):
        status, headers, body = curl(
            "-H", f"Authorization: Bearer {access}", "-X", "PUT", f"{base}{path}"
        )
        expect(status == expected, f"status {status}, expected {expected}: {body}")
        if expected == 201:
            expect(
                headers.get("location", "").endswith(path),
                f"Location {headers.get('location')!r} does not end with {path}",
            )

    report.check(f"sam local start-api: PUT {path} -> 201 with Location", lambda: put(201))
    report.check(f"sam local start-api: PUT {path} again -> 204", lambda: put(204))

    def delete():
        status, _, body = curl("-H", f"Authorization: Bearer {access}", "-X", "DELETE", f"{base}{path}")
        expect(status == 204, f"status {status}, expected 204: {body}")

    report.check(f"sam local start-api: DELETE {path} -> 204", delete)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", required=True, help="the sam executable")
    parser.add_argument("--gateway", required=True, help="docker bridge gateway address")
    parser.add_argument("--admin", required=True, help="the webhooks-admin binary")
    parser.add_argument("--work", required=True, help="a scratch directory for this run")
    args = parser.parse_args()
    report = Report()
    try:
        run(args, report)
    except Exception as e:  # noqa: BLE001 - set-up failures are reported as a failed test
        report.failed += 1
        print(f"FAIL sam-local set-up: {type(e).__name__}: {e}", flush=True)
    print(f"sam-local: {report.passed} passed, {report.failed} failed", flush=True)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
