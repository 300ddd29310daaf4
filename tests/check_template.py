"""Checks that the configuration table (docs/configuration.md), template.yaml and the code agree.

- every template parameter is a row of the configuration table, with the same default,
  and in exactly one of the console's parameter groups;
- every environment variable the template sets is one the code reads (shared/src/config.rs),
  and every variable named in the table is set by the template;
- every alarm notifies AlarmTopicArn when it is set, and an alarm on the service's own metrics
  watches one the code writes;
- the slowest retry schedule the parameters' bounds allow ends (in the dead-letter queue) at
  least a day before the delivery queue's retention would delete the message.

Run by scripts/test; uses cfn-lint's YAML loader, which understands !Ref and friends.
"""

import json
import re
import sys
from pathlib import Path

from cfnlint.decode import cfn_yaml

root = Path(__file__).resolve().parent.parent
template = cfn_yaml.load(str(root / "template.yaml"))
configuration = (root / "docs" / "configuration.md").read_text()
config_rs = (root / "shared" / "src" / "config.rs").read_text()

problems = []

# The table comes before the first section of the page.
section = configuration.split("\n## ", 1)[0]
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
        problems.append(f"parameter {name} is missing from the configuration table in docs/configuration.md")
        continue
    default = str(spec.get("Default", ""))
    if rows[name][0] != default:
        problems.append(f"{name}: docs/configuration.md default {rows[name][0]!r}, template {default!r}")
grouped = [
    name
    for group in template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    for name in group["Parameters"]
]
for name in parameters:
    if grouped.count(name) != 1:
        problems.append(f"parameter {name} is in {grouped.count(name)} parameter groups, not one")
for name in rows:
    if name not in parameters:
        problems.append(f"docs/configuration.md lists {name}, which the template does not have")

env = template["Globals"]["Function"]["Environment"]["Variables"]
read_by_code = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', config_rs))
not_config = {"RUST_LOG", "AWS_ENDPOINT_URL"}  # read by the logger, by the AWS SDK
for var in env:
    if var not in read_by_code and var not in not_config:
        problems.append(f"template sets {var}, which shared/src/config.rs does not read")
for name, (_, var) in rows.items():
    if var not in ("—", "") and var not in env:
        problems.append(f"docs/configuration.md says {name} is {var}, which the template does not set")


# ---------------------------------------------------------------- alarms

metrics_rs = (root / "shared" / "src" / "metrics.rs").read_text()
notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
alarms = {
    name: r["Properties"]
    for name, r in template["Resources"].items()
    if r["Type"] == "AWS::CloudWatch::Alarm"
}
for name, alarm in alarms.items():
    for actions in ("AlarmActions", "OKActions"):
        if alarm.get(actions) != notify:
            problems.append(f"alarm {name}: {actions} is not the AlarmTopicArn topic when set")
    # The service's own metrics come from its EMF lines: the name must be one the code writes.
    if alarm.get("Namespace") == "PersonWebhooks" and f'"{alarm["MetricName"]}"' not in metrics_rs:
        problems.append(f"alarm {name} watches {alarm['MetricName']}, which shared/src/metrics.rs does not write")

# ---------------------------------------------------------------- retry schedule vs retention

DAY = 86400
# Time allowed between a message becoming visible and the event source handing it to the
# delivery function. Lambda polls continuously; a longer backlog is what the delivery queue's
# age-of-oldest-message alarm is for.
PICKUP_ALLOWANCE = 300


def rust_duration_secs(path, name):
    """The seconds of `const NAME: Duration = Duration::from_secs(<product>)` in a Rust file."""
    text = (root / path).read_text()
    m = re.search(rf"const {name}: Duration = Duration::from_secs\(([\d_ *]+)\);", text)
    if not m:
        raise SystemExit(f"{path}: cannot find the constant {name}")
    value = 1
    for factor in m.group(1).split("*"):
        value *= int(factor.strip().replace("_", ""))
    return value


def upper_bound(value, what):
    """The largest value a template property can take: itself, or a parameter's MaxValue."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        spec = parameters.get(value["Ref"], {})
        if "MaxValue" not in spec:
            problems.append(f"{what} is parameter {value['Ref']}, which has no MaxValue")
            return None
        return int(spec["MaxValue"])
    try:
        return int(value)
    except (TypeError, ValueError):
        problems.append(f"{what} = {value!r}: cannot bound it")
        return None


def schedule_secs(receives, gap_after):
    """Longest time from send to the dead-letter queue with `receives` receives, when
    failed receive n hides the message for gap_after(n) seconds."""
    total = max_send_delay  # a message may be sent with a delay (sync steps)
    for n in range(1, receives + 1):
        # picked up, then the function runs up to its timeout before it hides the message
        total += PICKUP_ALLOWANCE + function_timeout
        if n < receives:
            total += gap_after(n)
    # after the last receive the message is made visible at once; the next receive
    # moves it to the dead-letter queue
    return total + PICKUP_ALLOWANCE


resources = template["Resources"]
queue = resources["DeliveryQueue"]["Properties"]
retention = int(queue["MessageRetentionPeriod"])
max_receives = upper_bound(queue["RedrivePolicy"]["maxReceiveCount"], "maxReceiveCount")
max_base = upper_bound({"Ref": "RetryBaseSeconds"}, "RetryBaseSeconds")
function_timeout = int(resources["DeliveryFunction"]["Properties"]["Timeout"])
# A crashed invocation's messages come back after the queue's visibility timeout.
crash_gap = int(queue["VisibilityTimeout"])
cap = rust_duration_secs("shared/src/retry.rs", "MAX_RETRY_DELAY")
max_send_delay = rust_duration_secs("shared/src/ports.rs", "MAX_SEND_DELAY")
jitter = float(re.search(r"jitter: ([\d.]+),", (root / "shared/src/retry.rs").read_text()).group(1))
if max_receives is not None and max_base is not None:
    budget = retention - DAY
    # Without Retry-After: min(base * 2^(n-1), cap) plus jitter, never above the cap.
    natural = schedule_secs(
        max_receives, lambda n: max(min(max_base * 2 ** (n - 1) * (1 + jitter), cap), crash_gap)
    )
    # A receiver answering Retry-After of a day or more makes every wait the cap, whatever
    # the base; so does a backend failure or a crash at worst.
    worst = schedule_secs(max_receives, lambda n: max(cap, crash_gap))
    print(
        f"retry schedule at the bounds (MaxAttempts <= {max_receives}, RetryBaseSeconds <= "
        f"{max_base}): {natural / DAY:.2f} days without Retry-After, {worst / DAY:.2f} days at "
        f"worst; retention {retention / DAY:g} days"
    )
    if worst > budget:
        problems.append(
            f"the slowest retry schedule the parameters allow takes {worst / DAY:.2f} days, "
            f"more than the delivery queue's retention ({retention / DAY:g} days) minus a day: "
            f"messages would expire instead of reaching the dead-letter queue"
        )

# ---------------------------------------------------------------- flush workers

# For every FlushWorkers value, the enabled schedules' inputs split the 8 shards of a window
# between them, each shard to exactly one (two flushes of one shard would notify its
# records twice; a shard of none would never be flushed).
SHARDS = 8  # PENDING_SHARDS in shared/src/window.rs
flush_events = template["Resources"]["FlushFunction"]["Properties"]["Events"]
mapping = template["Mappings"]["FlushShards"]
for workers in parameters["FlushWorkers"]["AllowedValues"]:
    row = mapping.get(str(workers))
    if row is None:
        problems.append(f"FlushShards has no row for FlushWorkers {workers}")
        continue
    owners = {}
    enabled = 0
    for name, event in flush_events.items():
        props = event["Properties"]

        def resolve(value):
            if isinstance(value, dict) and "Fn::FindInMap" in value:
                _, _, key = value["Fn::FindInMap"]
                return row[key]
            return value

        if resolve(props.get("State", "ENABLED")) != "ENABLED":
            continue
        enabled += 1
        for shard in json.loads(resolve(props["Input"]))["shards"]:
            owners.setdefault(shard, []).append(name)
    if enabled != int(workers):
        problems.append(f"FlushWorkers {workers}: {enabled} flush schedules enabled")
    for shard in range(SHARDS):
        if len(owners.get(shard, [])) != 1:
            problems.append(f"FlushWorkers {workers}: shard {shard} is flushed by {owners.get(shard, [])}")
    if set(owners) - set(range(SHARDS)):
        problems.append(f"FlushWorkers {workers}: shards that do not exist: {sorted(set(owners) - set(range(SHARDS)))}")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(
    f"template.yaml, docs/configuration.md and config agree: {len(parameters)} parameters, {len(env)} variables, "
    f"{len(alarms)} alarms wired to AlarmTopicArn; every FlushWorkers value flushes each shard once"
)
