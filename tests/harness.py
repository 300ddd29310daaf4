"""What the Python test scripts share: a failed check, the report of their checks, a port
and an HTTP server on 127.0.0.1, the runner's environment and its stop.

The scripts run as plain files from a fresh clone (`python tests/receiver/test_members.py`),
so each puts this directory on `sys.path` before importing this module; nothing is
installed.
"""

import os
import socket
import subprocess
import threading
from http.server import ThreadingHTTPServer


class Failed(Exception):
    """A check that did not hold; the message says what was seen."""


def expect(condition, message):
    if not condition:
        raise Failed(message)


def describe(error):
    """How a failed check is reported: a `Failed` by its message alone, any other
    exception (a bug of the script or an unexpected answer) with its type too."""
    return str(error) if isinstance(error, Failed) else f"{type(error).__name__}: {error}"


class Report:
    """One `PASS name` / `FAIL name: why` line per check; the summary line
    `<name>: N passed, M failed`, which scripts/test reads, is printed once, last."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.lock = threading.RLock()  # held by the watchdog and by the final cleanup
        self.finished = False

    def record(self, name, ok, detail=""):
        with self.lock:
            if self.finished:
                return
            if ok:
                self.passed += 1
            else:
                self.failed += 1
            line = f"{'PASS' if ok else 'FAIL'} {name}"
            print(f"{line}: {detail}" if detail else line, flush=True)

    def check(self, name, fn):
        """Runs fn; an exception (usually a failed `expect`) is a failure. Returns fn's value."""
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - any error is a failed check, never a crash
            self.record(name, False, describe(e))
            return None
        self.record(name, True, value if isinstance(value, str) else "")
        return value

    def finish(self):
        """Prints the summary line; True the first time only."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            print(f"{self.name}: {self.passed} passed, {self.failed} failed", flush=True)
            return True


def free_port(host="127.0.0.1"):
    """A port nothing listens on now, for a process that binds it itself."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def serve(handler, host="127.0.0.1", server_class=ThreadingHTTPServer):
    """`server_class` with `handler` on a free port of `host`, serving on a daemon thread
    until `shutdown()`; its `server_address` holds the port."""
    server = server_class((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def runner_env():
    """This process's environment for a runner on 127.0.0.1: without the proxy variables,
    which would send its calls to the local receiver through a proxy."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def stop_process(process, timeout=5):
    """Ends `process` if it still runs: SIGTERM, then SIGKILL when it has not exited
    within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
