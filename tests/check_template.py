"""Checks that README's configuration table, template.yaml and the code agree.

- every template parameter is a row of the README's configuration table, with the same default;
- every environment variable the template sets is one the code reads (shared/src/config.rs),
  and every variable named in the table is set by the template.

Run by scripts/test; uses cfn-lint's YAML loader, which understands !Ref and friends.
"""

import re
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

root = Path(__file__).resolve().parent.parent
template = cfn_yaml.load(str(root / "template.yaml"))
readme = (root / "README.md").read_text()
config_rs = (root / "shared" / "src" / "config.rs").read_text()

problems = []

section = readme.split("### Configuration", 1)[1].split("\n## ", 1)[0]
rows = {}
for line in section.splitlines():
    m = re.match(r"\| `(\w+)` \| (.*?) \| (.*?) \|", line)
    if m:
        name, default, env = m.groups()
        default = default.strip().strip("`")
        rows[name] = ("" if default == "(empty)" else default, env.strip().strip("`"))

parameters = template["Parameters"]
for name, spec in parameters.items():
    if name not in rows:
        problems.append(f"parameter {name} is missing from the README configuration table")
        continue
    default = str(spec.get("Default", ""))
    if rows[name][0] != default:
        problems.append(f"{name}: README default {rows[name][0]!r}, template {default!r}")
for name in rows:
    if name not in parameters:
        problems.append(f"README lists {name}, which the template does not have")

env = template["Globals"]["Function"]["Environment"]["Variables"]
read_by_code = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', config_rs))
not_config = {"RUST_LOG"}  # read by the logger
for var in env:
    if var not in read_by_code and var not in not_config:
        problems.append(f"template sets {var}, which shared/src/config.rs does not read")
for name, (_, var) in rows.items():
    if var not in ("—", "") and var not in env:
        problems.append(f"README says {name} is {var}, which the template does not set")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"template.yaml, README and config agree: {len(parameters)} parameters, {len(env)} variables")
