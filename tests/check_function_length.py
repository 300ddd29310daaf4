"""Checks that no production function is longer than a reader can hold: 60 lines.

The rule (issue 12): a function longer than about a screen is split into named steps, so a
reader sees what it does from the names before reading how. Counted here:

- production code: the Rust sources of `shared/src`, `functions/*/src`, `local/src` and
  `admin/src`. Not tests: a file named `tests.rs` or under a `tests/` folder, an item
  under `#[cfg(test)]` (or `#[cfg(feature = "testing")]`, the test helpers' feature), and a
  function marked `#[test]` or `#[tokio::test]`; benches live outside these folders;
- a function's length: the lines from the one holding `fn` to the one holding its closing
  brace, not counting blank lines and lines that hold only a comment (doc comments and
  attributes above `fn` are not part of it). A nested function or closure counts in the one
  around it, and on its own;
- a declaration without a body (a trait's required method) is not a function here.

Usage:
    python tests/check_function_length.py            fails (exit 1) listing every function
                                                     over the limit; prints the longest
    python tests/check_function_length.py --top 20   also lists the 20 longest

Before it reads the tree it checks itself on sources written to trip a naive brace counter
(braces in strings, raw strings, chars, comments; lifetimes), so a scanner that stops
seeing functions fails here instead of passing everything. Run by scripts/test.
"""

import argparse
import re
import sys
from pathlib import Path

LIMIT = 60
ROOTS = ["shared/src", "functions", "local/src", "admin/src"]

root = Path(__file__).resolve().parent.parent


def mask(source):
    """The source with comments blanked (spaces) and string and char contents replaced by
    `x` (so a line inside a long string still counts as code), newlines kept: what is left
    of braces, `fn` and `#[...]` is code."""
    out = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end == -1 else end
            out.append(" " * (end - i))
            i = end
        elif source.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if source.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif source.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", source[i:j]))
            i = j
        elif (raw := _raw_string_start(source, i)) is not None:
            closing = '"' + raw.group(1)
            end = source.find(closing, i + raw.end())
            end = n if end == -1 else end + len(closing)
            out.append(_blank_string(source[i:end]))
            i = end
        elif c == '"' or (c == "b" and source.startswith('b"', i) and not _ident_before(source, i)):
            j = i + (2 if c == "b" else 1)
            while j < n and source[j] != '"':
                j += 2 if source[j] == "\\" else 1
            end = min(j + 1, n)
            out.append(_blank_string(source[i:end]))
            i = end
        elif c == "'":
            end = _char_literal_end(source, i)
            if end is None:  # a lifetime or a label
                out.append(c)
                i += 1
            else:
                out.append(_blank_string(source[i:end]))
                i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _raw_string_start(source, i):
    """The match of a raw string's opening (`r"`, `r#"`, `br##"`, ...) at `i`, if any."""
    if source[i] not in "br" or _ident_before(source, i):
        return None
    return re.match(r'b?r(#*)"', source[i:i + 300])


def _ident_before(source, i):
    return i > 0 and (source[i - 1].isalnum() or source[i - 1] == "_")


def _blank_string(text):
    return re.sub(r"[^\n]", "x", text)


def _char_literal_end(source, i):
    """The end of the char literal at `i`, or None when `'` starts a lifetime."""
    if source.startswith("'\\", i):
        end = source.find("'", i + 2 + (source[i + 2] == "'"))
        return None if end == -1 else end + 1
    if i + 2 < len(source) and source[i + 2] == "'":
        return i + 3
    return None


FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
CFG = re.compile(r"#\[cfg\(([^\]]*)\)\]")
TEST_ATTR = re.compile(r"#\[(?:tokio::)?test\b")


def body_span(masked, start):
    """(open, close) offsets of the braces of the item whose header starts at `start`, or
    None when it ends with `;` first (a declaration)."""
    depth = 0
    i = start
    while i < len(masked):
        c = masked[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return None
        elif c == "{" and depth == 0:
            return i, matching_brace(masked, i)
        i += 1
    return None


def matching_brace(masked, open_at):
    depth = 0
    for i in range(open_at, len(masked)):
        if masked[i] == "{":
            depth += 1
        elif masked[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(masked) - 1


def test_ranges(source, masked, declarations=False):
    """Offsets covered by items under a test-only `#[cfg(...)]` (with `declarations`, also
    the start of each bodiless item, such as `mod testing;`, with None as its end)."""
    ranges = []
    for m in CFG.finditer(masked):
        condition = source[m.start(1):m.end(1)]  # the mask hides `"testing"`
        if "not(" in condition or not re.search(r'\btest\b|"testing"', condition):
            continue
        span = body_span(masked, m.end())
        if span is not None:
            ranges.append((m.start(), span[1]))
        elif declarations:
            ranges.append((m.start(), None))
    return ranges


def functions(source):
    """(name, first line, counted lines) of each production function with a body."""
    masked = mask(source)
    excluded = [r for r in test_ranges(source, masked) if r[1] is not None]
    assert len(masked) == len(source)
    line_of = _line_index(masked)
    lines = masked.split("\n")
    found = []
    for m in FN.finditer(masked):
        if any(a <= m.start() <= b for a, b in excluded):
            continue
        header_start = masked.rfind("\n", 0, m.start()) + 1
        attributes = masked[max(0, header_start - 400):header_start]
        if TEST_ATTR.search(attributes.split("}")[-1].split(";")[-1]):
            continue
        span = body_span(masked, m.end())
        if span is None:
            continue
        first, last = line_of(m.start()), line_of(span[1])
        counted = sum(1 for line in lines[first:last + 1] if line.strip())
        found.append((m.group(1), first + 1, counted))
    return found


def _line_index(text):
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def line_of(offset):
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    return line_of


def test_modules(path, source):
    """The files and folders of the modules `path` declares under a test-only `#[cfg]`
    (`#[cfg(any(test, feature = "testing"))] pub mod testing;`)."""
    masked = mask(source)
    folder = path.parent if path.name in ("lib.rs", "main.rs", "mod.rs") else path.with_suffix("")
    found = []
    for start, _ in test_ranges(source, masked, declarations=True):
        declared = re.match(r"#\[cfg\([^\]]*\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", masked[start:])
        if declared:
            found += [folder / f"{declared.group(1)}.rs", folder / declared.group(1)]
    return found


def production_files():
    """The production sources, as paths relative to the root."""
    files = []
    for base in ROOTS:
        for path in sorted((root / base).rglob("*.rs")):
            relative = path.relative_to(root)
            if path.name == "tests.rs" or "tests" in relative.parts[1:-1] or "target" in relative.parts:
                continue
            files.append(relative)
    excluded = set()
    for path in files:
        excluded.update(test_modules(path, (root / path).read_text()))
    return [f for f in files if not any(f == e or e in f.parents for e in excluded)]


SELF_TEST = r'''
fn short() -> &'static str {
    "}}}"
}

/// A doc comment with a brace: {
fn braces_everywhere<'a>(x: &'a [u8; 4]) -> char {
    // a comment with a brace }
    let _ = r#"raw "} string"#;
    let _ = b"bytes }";
    /* block { comment /* nested } */ */
    let _ = '{';
    let _ = '\'';
    let _ = '\u{7d}';
    let _ = "escaped \" }";

    'outer: loop {
        break 'outer;
    }
    '}'
}

trait Declares {
    fn declared(&self) -> u8;
}

#[cfg(test)]
mod tests {
    fn not_counted() {}
}

#[tokio::test]
async fn neither() {}

fn last() {
    let text = "a string
over two lines";
}
'''


def self_test():
    got = {name: (line, counted) for name, line, counted in functions(SELF_TEST)}
    want = {"short": (2, 3), "braces_everywhere": (7, 12), "last": (35, 4)}
    if got != want:
        sys.exit(f"check_function_length: the scanner is wrong on its own sample: got {got}, want {want}")
    lib = '#[cfg(any(test, feature = "testing"))]\npub mod testing;\n#[cfg(feature = "sqlite")]\nmod sqlite;\n'
    got = test_modules(Path("src/lib.rs"), lib)
    want = [Path("src/testing.rs"), Path("src/testing")]
    if got != want:
        sys.exit(f"check_function_length: test-only modules wrong on its own sample: got {got}, want {want}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=0, help="list the N longest functions")
    args = parser.parse_args()
    self_test()
    found = []
    for path in production_files():
        for name, line, counted in functions((root / path).read_text()):
            found.append((counted, f"{path}:{line}", name))
    found.sort(reverse=True)
    for counted, place, name in found[: args.top]:
        print(f"{counted:4} {place} {name}")
    over = [f for f in found if f[0] > LIMIT]
    for counted, place, name in over:
        print(f"too long: {place} {name}: {counted} lines (limit {LIMIT})")
    if found:
        counted, place, name = found[0]
        print(f"functions: {len(found)} read; the longest is {name} ({place}), {counted} lines; limit {LIMIT}")
    if over or not found:
        sys.exit(1)


if __name__ == "__main__":
    main()
