"""Checks that the docs a newcomer reads still match the tree.

- README's code map names every module. Each directory of the workspace's code (shared/src,
  functions, local, admin, tests, bench, scripts) has an entry in the `## Code map` section: a
  list item (which may wrap onto indented lines) or table row that starts with the directory's
  path in a code span, and names each of the directory's files in code spans (`stem` or
  `file.ext`). A directory's own `mod.rs`, `lib.rs` and `main.rs` are named by its entry; a
  crate's `src/main.rs` or `src/lib.rs` may instead be named by the entry of the directory
  holding the crate. A module directory is also named in its parent's entry. Every code span in
  an entry names something in that directory, so an entry cannot name a module that is gone.
- every relative link in README.md and docs/*.md points at a file that exists, and a link with
  an anchor at a heading that exists in that file (GitHub's heading ids).

Run by scripts/test; prints what is missing and exits 1, so whoever adds, moves or renames a
module or a heading updates the docs in the same change.
"""

import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
CODE_DIRS = ("shared/src", "functions", "local", "admin", "tests", "bench", "scripts")
# Files under CODE_DIRS that are manifests or data rather than modules.
NOT_MODULES = re.compile(r"(^|/)(Cargo\.toml|README\.md|requirements[^/]*\.txt|[^/]*\.json)$")
ROOTS = {"mod", "lib", "main"}

problems = []


def tracked_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *CODE_DIRS], cwd=root, check=True, capture_output=True, text=True
        ).stdout
        files = out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        skip = {"target", "node_modules", "__pycache__", ".venv"}
        files = [
            str(p.relative_to(root))
            for d in CODE_DIRS
            for p in (root / d).rglob("*")
            if p.is_file() and not skip.intersection(p.parts)
        ]
    return sorted(f for f in files if not NOT_MODULES.search(f) and (root / f).exists())


def outside_fences(markdown):
    """The lines of `markdown`, with those of fenced code blocks blanked."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return out


def section(lines, title):
    """The lines of the `## title` section."""
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {title}"), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def glob_escape(name):
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------- the code map

entries = []  # [directory, the text that names its modules]
for line in section(outside_fences((root / "README.md").read_text()), "Code map"):
    start = re.match(r"\s*(?:[-*]|\|)\s*`([^`]+/)`(.*)", line)
    if start:
        entries.append([start.group(1), start.group(2)])
    elif entries and line.startswith((" ", "\t")) and line.strip():
        entries[-1][1] += " " + line.strip()  # a list item wrapped onto the next line
named = {}
for directory, text in entries:
    named.setdefault(directory, set()).update(t.rstrip("/") for t in re.findall(r"`([^`]+)`", text))

if not named:
    problems.append("README.md has no `## Code map` entries (- `dir/` ... `module` ...)")

files = tracked_files()
directories = sorted({str(Path(f).parent) + "/" for f in files})


def named_by_crate(directory, stem):
    """X/src/main.rs or X/src/lib.rs, named by an entry for X/ or by X's parent's entry."""
    if stem not in ("main", "lib") or not directory.endswith("/src/"):
        return False
    crate = directory[: -len("src/")].rstrip("/")
    parent, _, name = crate.rpartition("/")
    return crate + "/" in named or name in named.get(parent + "/", set())


for f in files:
    path = Path(f)
    directory = str(path.parent) + "/"
    stem = path.name.split(".")[0]
    names = named.get(directory)
    if names is not None and (stem in ROOTS or stem in names or path.name in names):
        continue
    if named_by_crate(directory, stem):
        continue
    if names is None:
        problems.append(f"README code map: no entry for `{directory}` (holding {f})")
    else:
        problems.append(f"README code map: the `{directory}` entry does not name `{stem}` ({f})")

for directory in directories:
    parent, _, name = directory.rstrip("/").rpartition("/")
    is_module_dir = (root / directory / "mod.rs").exists() or (root / (directory.rstrip("/") + ".rs")).exists()
    if is_module_dir and name not in named.get(parent + "/", set()):
        problems.append(f"README code map: the `{parent}/` entry does not name the module directory `{name}/`")

for directory, names in named.items():
    here = root / directory
    if not here.is_dir():
        problems.append(f"README code map: `{directory}` is not a directory")
        continue
    for name in sorted(names):
        # Every code span of an entry names something in its directory (prose goes unquoted).
        if not ((here / name).exists() or any(here.glob(glob_escape(name) + ".*"))):
            problems.append(f"README code map: the `{directory}` entry names `{name}`, which is not there")


# ---------------------------------------------------------------- links


def heading_ids(markdown):
    ids, seen = set(), {}
    for line in outside_fences(markdown):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    for m in re.finditer(r'<a\s+(?:name|id)="([^"]+)"', markdown):
        ids.add(m.group(1))
    return ids


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
documents = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
links = 0
for doc in documents:
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in outside_fences(doc.read_text()))
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
            continue
        links += 1
        where = f"{doc.relative_to(root)}: link {target!r}"
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            problems.append(f"{where}: {path} does not exist")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in heading_ids(resolved.read_text()):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(root)}")

if problems:
    print("\n".join(problems))
    print(f"check_docs: {len(problems)} problems")
    sys.exit(1)
print(
    f"check_docs: the README code map names all {len(files)} modules in {len(directories)} directories; "
    f"{links} relative links in {len(documents)} documents resolve"
)
