"""Checks that the declared minimum Rust version (MSRV) is one clippy enforces.

Clippy's `incompatible_msrv` lint fails `cargo clippy -- -D warnings` on a std API newer than
a package's `rust-version`, but only for packages that declare one: a workspace's
`[workspace.package] rust-version` reaches a member only through `rust-version.workspace = true`.

- every workspace member declares the workspace's rust-version (cargo metadata);
- nothing switches the lint off (`allow(clippy::incompatible_msrv)`, a clippy.toml `msrv`);
- a probe crate with the same rust-version that calls an API newer than it fails the lint,
  and passes once its rust-version is raised to that API's release (so the failure is the
  lint's, not a typo's).

Run by scripts/test; needs cargo and clippy, no network (the probe has no dependencies).
"""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
problems = []

msrv = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]


def version(text):
    return tuple(int(part) for part in text.split("."))


metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
for package in metadata["packages"]:
    if package["rust_version"] != msrv:
        problems.append(
            f"{package['name']} declares rust-version {package['rust_version']!r}, not the "
            f"workspace's {msrv!r}: add `rust-version.workspace = true` to its Cargo.toml"
        )

for path in root.glob("**/*.rs"):
    if "target" in path.relative_to(root).parts:
        continue
    if re.search(r"allow\s*\(\s*clippy::incompatible_msrv", path.read_text()):
        problems.append(f"{path.relative_to(root)} switches off clippy::incompatible_msrv")
for name in ("clippy.toml", ".clippy.toml"):
    config = root / name
    if config.exists() and re.search(r"^\s*msrv\s*=", config.read_text(), re.M):
        problems.append(f"{name} sets msrv, overriding Cargo.toml's rust-version")

# The probe: Vec::push_mut is stable since Rust 1.95.0.
PROBE_API, PROBE_SINCE = "Vec::push_mut", "1.95.0"
probe_code = """//! MSRV lint probe.

/// Uses an API newer than the probe's rust-version when that is below 1.95.
pub fn probe() -> u32 {
    let mut v = Vec::new();
    *v.push_mut(1u32) + 1
}
"""


def clippy_probe(rust_version):
    probe = root / "target" / "msrv-probe"
    (probe / "src").mkdir(parents=True, exist_ok=True)
    (probe / "Cargo.toml").write_text(
        "[package]\n"
        'name = "msrv-probe"\n'
        'version = "0.0.0"\n'
        'edition = "2024"\n'
        f'rust-version = "{rust_version}"\n'
        "publish = false\n\n"
        "# Not a member of the project's workspace.\n"
        "[workspace]\n"
    )
    (probe / "src" / "lib.rs").write_text(probe_code)
    env = dict(os.environ, CARGO_TARGET_DIR=str(probe / "target"))
    # The same command as the lint step of scripts/test.
    return subprocess.run(
        ["cargo", "clippy", "--quiet", "--", "-D", "warnings"],
        cwd=probe,
        env=env,
        capture_output=True,
        text=True,
    )


if version(msrv) >= version(PROBE_SINCE):
    problems.append(
        f"the probe API {PROBE_API} (Rust {PROBE_SINCE}) is not newer than the MSRV {msrv}: "
        "pick an API stabilised after the MSRV for the probe"
    )
else:
    below = clippy_probe(msrv)
    if below.returncode == 0 or "incompatible_msrv" not in below.stderr:
        problems.append(
            f"clippy accepted {PROBE_API} (Rust {PROBE_SINCE}) under rust-version {msrv}:\n"
            f"{below.stderr}"
        )
    at = clippy_probe(PROBE_SINCE)
    if at.returncode != 0:
        problems.append(f"the probe does not pass clippy under rust-version {PROBE_SINCE}:\n{at.stderr}")
    else:
        print(
            f"clippy fails {PROBE_API} (Rust {PROBE_SINCE}) under rust-version {msrv} "
            f"and accepts it under {PROBE_SINCE}"
        )

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"MSRV {msrv}: declared by all {len(metadata['packages'])} workspace members, lint effective")
