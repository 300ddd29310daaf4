"""Schemathesis hooks for tests/fuzz/run_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

The fuzzer generates callback and webhook URLs, and the service really delivers to them: Run
Test POSTs to an application's webhook at once, and a flush (POST /local/flush, which the fuzz
calls too) delivers to registered callbacks. The runner allows plain http and loopback/private
hosts (--allow-insecure-callbacks), so a generated URL could reach any host on the internet or
any service on this machine. This hook points every http(s) URL the fuzzer sends at the runner's
own receiver (/local/inbox/...) before the request goes out; URLs that are not http(s) (which
the service refuses anyway) are sent as generated. Nothing else is changed.

FUZZ_INBOX_BASE (set by the runner script) is e.g. http://127.0.0.1:PORT/local/inbox/fuzz.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote, urlsplit

import schemathesis

_HTTP = re.compile(r"^https?:", re.IGNORECASE)


def _inbox_base() -> str:
    base = os.environ.get("FUZZ_INBOX_BASE", "")
    if not base.startswith("http://127.0.0.1:"):
        raise RuntimeError("FUZZ_INBOX_BASE must be the runner's http://127.0.0.1:PORT/local/inbox/... URL")
    return base.rstrip("/")


def contain(url: str) -> str:
    """The URL pointed at the local inbox, keeping its path, query and fragment (so distinct
    generated URLs stay distinct and keep their syntax), or the URL unchanged when it is not
    http(s)."""
    if not isinstance(url, str) or not _HTTP.match(url):
        return url
    base = _inbox_base()
    if url == base or url.startswith(base + "/"):
        return url  # already contained (an example or a value the hook saw before)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return base + "/unparsable"
    if not parts.hostname:
        # e.g. "https:evil.com", which WHATWG parsers (the service's) read as host evil.com.
        return base + "/no-host"
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    if parts.fragment:
        rest += "#" + parts.fragment
    return base + (rest if rest.startswith("/") else "/" + rest)


@schemathesis.hook
def before_call(context, case, kwargs):
    operation = case.operation
    method = operation.method.upper()
    path = operation.path
    if path == "/{recordId}/webhook/{callbackUrl}":
        raw = case.path_parameters.get("callbackUrl")
        if isinstance(raw, str):
            decoded = unquote(raw)
            contained = contain(decoded)
            if contained != decoded:
                case.path_parameters["callbackUrl"] = quote(contained, safe="")
    elif path == "/application/{applicationId}" and method == "PATCH":
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("webhook"), dict):
            url = body["webhook"].get("url")
            contained = contain(url)
            if contained != url:
                # A copy: generated bodies can share objects with examples and other cases.
                case.body = {**body, "webhook": {**body["webhook"], "url": contained}}
