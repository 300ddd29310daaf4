#!/usr/bin/env python3
"""A bounded schemathesis fuzz run of the local runner against openapi.yaml.

    .venv/bin/python tests/fuzz/run_schemathesis.py --runner target/debug/webhooks-local

What it does:

1. picks a free port on 127.0.0.1 and starts the runner there (in-memory storage, insecure
   callbacks allowed so callbacks can point at its own /local/inbox, flush timer 1 h so nothing
   is delivered behind the fuzzer's back, one OAuth client APP-FUZZ and one application app-1);
2. waits (at most 15 s) for GET /local/status to answer 200;
3. gets a bearer token from POST /oauth/token (and checks that answer against the spec's
   `Token` schema);
4. runs `schemathesis run openapi.yaml` against the runner, with `Authorization: Bearer <token>`
   and `x-access-token: key-1` on every request, the checks not_a_server_error,
   status_code_conformance, content_type_conformance, response_headers_conformance,
   response_schema_conformance, unsupported_method, allow_header_conformance and ignored_auth
   (see CHECKS; negative_data_rejection and positive_data_acceptance are left out: the
   dictionaries and the URL hook below deliberately turn some generated values into valid
   ones, and the token form cannot say "client_id required unless HTTP Basic"), all four phases (examples, coverage, fuzzing, stateful), at
   most --max-examples test cases per operation and phase, a fixed --seed, one worker, no
   example database (so a run depends only on the seed and the code), Hypothesis' deadline off
   (schemathesis 4 always runs Hypothesis with deadline=None; there is no option for it);
5. stops schemathesis with SIGINT (so it still prints its summary) if it runs longer than
   --timeout seconds (default 240), and counts that as an error;
6. always stops the runner.

Configuration handed to schemathesis (a generated schemathesis.toml and a hooks module):

- `applicationId` is `app-1` in 75 % of the cases (a dictionary binding): the API key is
  app-1's, and with random ids every application route would only ever answer 403 and
  the handlers behind the check would go untested. The other 25 % keep the 403 path fuzzed.
- `recordId` is a real ORCID iD in 50 % of the cases (the sample record, which exists, and two
  valid iDs that do not): random iDs matching the pattern fail the check digit 10 times in 11.
- the token endpoint's form gets the runner's client credentials, so that its 200 answer is
  checked against the schema (grant_type and scope are still generated, and mutated in
  negative cases).
- tests/fuzz/schemathesis_hooks.py points every generated http(s) callback or webhook URL at
  the runner's own /local/inbox before the request is sent: Run Test and flushes really
  deliver, and the fuzzer must not POST to arbitrary internet hosts or to local services.

Every route is fuzzed, the `local` ones included. None makes the run meaningless: DELETE
/local/records could delete the sample record, but its documented example is another record
and random ids practically never hit it; DELETE /local/inbox and POST /local/flush only reset
or advance state the other operations do not depend on.

The last line printed is exactly `schemathesis: N passed, M failed`, where N and M count API
OPERATIONS (as schemathesis' summary does): M = operations with at least one failed check or
an error, N = tested operations without. The exit status is non-zero when a check failed, when
schemathesis reported an error, timed out or could not run, or when the runner did not start.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from harness import free_port, stop_process  # noqa: E402

HOOKS = Path(__file__).resolve().with_name("schemathesis_hooks.py")

CLIENT_ID = "APP-FUZZ"
CLIENT_SECRET = "fuzz-secret"
APPLICATION_ID = "app-1"
API_KEY = "key-1"
# The runner's sample record (exists) and two valid ORCID iDs from ORCID's documentation (do not).
ORCID_IDS = ["0000-0002-7465-2162", "0000-0002-1825-0097", "0000-0002-1694-233X"]

CHECKS = [
    "not_a_server_error",  # no 5xx (the API's only intended 5xx, 503, needs a failing backend)
    "status_code_conformance",  # every status is documented for its operation
    "content_type_conformance",  # every Content-Type is documented for that status
    "response_headers_conformance",  # documented headers (Location, Allow, ...) present and valid
    "response_schema_conformance",  # every JSON body matches its schema
    "unsupported_method",  # an undocumented method on a documented path answers 405
    "allow_header_conformance",  # ... with an Allow header listing the documented methods
    "ignored_auth",  # routes with a security requirement refuse requests without it
]

STARTUP_TIMEOUT_S = 15.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", required=True, help="path of the webhooks-local binary")
    parser.add_argument("--spec", default=str(ROOT / "openapi.yaml"), help="OpenAPI document (default: openapi.yaml)")
    parser.add_argument("--max-examples", type=int, default=30, help="test cases per operation and phase (default 30)")
    parser.add_argument("--seed", type=int, default=20261125, help="schemathesis/Hypothesis seed (default 20261125)")
    parser.add_argument("--timeout", type=float, default=240.0, help="wall-clock cap of the schemathesis run, seconds")
    parser.add_argument("--report-dir", help="where schemathesis writes its JSON report (default: a new temp dir)")
    return parser.parse_args()


def resolve(path: str) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = ROOT / candidate
    return candidate.resolve()


def schemathesis_command() -> list[str]:
    beside = Path(sys.executable).with_name("schemathesis")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("schemathesis")
    if found:
        return [found]
    raise SystemExit("schemathesis is not installed: .venv/bin/pip install schemathesis==4.32.5")


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 5.0):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_until_ready(base: str, runner: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise RuntimeError(f"the runner exited with status {runner.returncode}:\n{tail(log_path)}")
        try:
            status, _, _ = http("GET", f"{base}/local/status", timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise RuntimeError(f"GET /local/status did not answer 200 within {STARTUP_TIMEOUT_S:.0f} s ({last}):\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def get_token(base: str, spec: Path) -> str:
    form = urllib.parse.urlencode(
        {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_type": "client_credentials", "scope": "/webhook"}
    ).encode()
    status, _, body = http(
        "POST", f"{base}/oauth/token", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    if status != 200:
        raise RuntimeError(f"POST /oauth/token answered {status}: {body[:500]!r}")
    token = json.loads(body)
    check_token_schema(token, spec)
    return token["access_token"]


def check_token_schema(token: dict, spec: Path) -> None:
    """The bootstrap answer is a real 200 of the token endpoint: check it against the spec too."""
    try:
        import jsonschema
        import yaml
    except ImportError:
        print("note: jsonschema/PyYAML not installed; the bootstrap token answer is not checked", file=sys.stderr)
        return
    document = yaml.safe_load(spec.read_text())
    schema = dict(document["components"]["schemas"]["Token"])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(token)


def write_config(directory: Path) -> Path:
    config = directory / "schemathesis.toml"
    config.write_text(
        f"""# Generated by tests/fuzz/run_schemathesis.py
# No crash cache: a run depends only on the seed and the code, and leaves nothing in the repo.
[cache]
enabled = false

[dictionaries.application_ids]
values = [{json.dumps(APPLICATION_ID)}]

[dictionaries.orcid_ids]
values = {json.dumps(ORCID_IDS)}

[parameters]
"path.applicationId" = {{ dictionary = "application_ids", probability = 0.75 }}
"path.recordId" = {{ dictionary = "orcid_ids", probability = 0.5 }}

[[operations]]
include-operation-id = "issueToken"
parameters = {{ "body.client_id" = {json.dumps(CLIENT_ID)}, "body.client_secret" = {json.dumps(CLIENT_SECRET)} }}
"""
    )
    return config


def run_schemathesis(command: list[str], env: dict[str, str], timeout: float, cwd: Path) -> tuple[int, bool]:
    """Runs schemathesis with its output on ours; returns (exit status, timed out).

    It runs in the temp work directory (`cwd`), so nothing (Hypothesis' .hypothesis/, a
    .schemathesis/ cache) is written into the repository."""
    process = subprocess.Popen(command, env=env, cwd=cwd)
    try:
        return process.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        print(f"\n!!! schemathesis ran longer than {timeout:.0f} s: interrupting it", flush=True)
        process.send_signal(signal.SIGINT)  # it stops and still prints its summary
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return process.returncode, True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def summarize(report_dir: Path, exit_status: int, timed_out: bool) -> tuple[int, int, bool]:
    """(operations passed, operations failed, ok) from schemathesis' JSON report."""
    reports = sorted(glob.glob(str(report_dir / "*.json")))
    if not reports:
        print("!!! schemathesis wrote no JSON report", flush=True)
        return 0, 0, False
    report = json.loads(Path(reports[-1]).read_text())
    operations = report.get("operations", {})
    failed_operations: set[str] = set()
    for failure in report.get("failures", []):
        failed_operations.update(failure.get("operations") or ["(unknown operation)"])
    errors = report.get("errors", [])
    for error in errors:
        labels = error.get("operations") or ([error["operation"]] if error.get("operation") else [])
        failed_operations.update(labels or ["(run-level error)"])
    tested = int(operations.get("tested", 0))
    failed = len(failed_operations)
    passed = max(tested - len([op for op in failed_operations if not op.startswith("(")]), 0)
    ok = (
        exit_status == 0
        and not timed_out
        and not report.get("failures")
        and not errors
        and int(operations.get("errored", 0)) == 0
        and report.get("complete", False)
    )
    if failed_operations:
        print("operations with failures or errors:\n  " + "\n  ".join(sorted(failed_operations)), flush=True)
    if timed_out or not report.get("complete", False):
        print(f"!!! the run is incomplete (stop reason: {report.get('stop_reason')}); counted as an error", flush=True)
    elif exit_status != 0 and not failed_operations:
        print(f"!!! schemathesis exited with status {exit_status}", flush=True)
    return passed, failed, ok


def main() -> int:
    args = parse_args()
    runner_path = resolve(args.runner)
    spec = resolve(args.spec)
    if not runner_path.is_file():
        print(f"!!! no runner at {runner_path} (build it with cargo build -p webhooks-local)", flush=True)
        print("schemathesis: 0 passed, 0 failed")
        return 2
    work = Path(tempfile.mkdtemp(prefix="webhooks-fuzz-"))
    report_dir = Path(args.report_dir).resolve() if args.report_dir else work / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    log_path = work / "runner.log"

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runner_command = [
        str(runner_path),
        "--listen", f"127.0.0.1:{port}",
        "--allow-insecure-callbacks",
        "--flush-interval", "1h",
        "--client", f"{CLIENT_ID}:{CLIENT_SECRET}",
        "--application", f"{APPLICATION_ID}:{API_KEY}",
    ]  # fmt: skip
    passed = failed = 0
    ok = False
    runner = None
    log = open(log_path, "wb")
    try:
        print(f"starting {' '.join(runner_command)}  (log: {log_path})", flush=True)
        runner = subprocess.Popen(runner_command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until_ready(base, runner, log_path)
        token = get_token(base, spec)
        config = write_config(work)
        command = schemathesis_command() + [
            "--config-file", str(config),
            "run", str(spec),
            "--url", base,
            "--header", f"Authorization: Bearer {token}",
            "--header", f"x-access-token: {API_KEY}",
            "--checks", ",".join(CHECKS),
            "--max-examples", str(args.max_examples),
            "--seed", str(args.seed),
            "--workers", "1",
            "--generation-database", "none",
            "--request-timeout", "20",
            "--output-sanitize", "false",  # throwaway local credentials; keeps curl reproductions usable
            "--no-color",
            "--report", "json",
            "--report-dir", str(report_dir),
        ]  # fmt: skip
        env = dict(os.environ, SCHEMATHESIS_HOOKS=str(HOOKS), FUZZ_INBOX_BASE=f"{base}/local/inbox/fuzz")
        print(f"running schemathesis against {base} (seed {args.seed}, at most {args.max_examples} cases per operation and phase, cap {args.timeout:.0f} s)", flush=True)
        status, timed_out = run_schemathesis(command, env, args.timeout, work)
        passed, failed, ok = summarize(report_dir, status, timed_out)
        if runner.poll() is not None:
            print(f"!!! the runner died during the run (status {runner.returncode}):\n{tail(log_path)}", flush=True)
            ok = False
    except Exception as e:  # noqa: BLE001 - report any setup failure and fail the run
        print(f"!!! {type(e).__name__}: {e}", flush=True)
        ok = False
    finally:
        if runner is not None:
            stop_process(runner, 10)
        log.close()
    print(f"(counts are API operations; report: {report_dir}; runner log: {log_path})", flush=True)
    print(f"schemathesis: {passed} passed, {failed} failed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
