"""Writes the cost mode's record (bench/README.md, "Cost") from run.sh's
results.tsv: one row per proxy, the median of the rounds with their range."""

import os
import statistics
from collections import defaultdict

env = os.environ
rates = env["COST_RATES"].split()
cells = defaultdict(list)  # (path, key) -> values, in round order
rounds = defaultdict(dict)  # round -> {(path, key): value}
for line in open(env["RESULTS_FILE"]):
    round_, path, key, value = line.rstrip("\n").split("\t")
    if value == "":
        continue
    cells[(path, key)].append(float(value))
    rounds[int(round_)][(path, key)] = value

LABELS = {
    "agent": "tracemesh agent (this build)",
    "agent_base": f"tracemesh agent ({env.get('BASELINE_NOTE') or 'baseline'})",
    "envoy": f"Envoy {env['ENVOY_VERSION']} (spans batched like the agent)",
    "envoy_default": f"Envoy {env['ENVOY_VERSION']} (span flushing as Istio leaves it)",
    "nginx": f"nginx {env['NGINX_VERSION']} (no tracing)",
    "hyper_floor": "hyper floor (the agent's libraries and runtime, nothing else; no tracing)",
}
paths = [p for p in LABELS if any(k[0] == p for k in cells)]


def med(path, key):
    values = cells.get((path, key))
    return statistics.median(values) if values else None


def cell(path, key, fmt, scale=1.0):
    values = [v * scale for v in cells.get((path, key), [])]
    if not values:
        return "—"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def delivered(path, key=None):
    pairs = list(zip(cells.get((path, "sat_delivered"), []), cells.get((path, "sat_requests"), [])))
    if not pairs:
        return None
    return [100 * d / r for d, r in pairs if r]


def delivered_cell(path):
    values = delivered(path)
    if not values:
        return "—"
    m = statistics.median(values)
    return f"{m:.1f}% ({min(values):.1f}–{max(values):.1f}%)" if len(values) > 1 else f"{m:.1f}%"


def rss_load(path, kind="rss"):
    """Peak memory under load per round, in MiB: `rss` (VmRSS) or `anon`
    (RssAnon: without the binary's pages mapped from the page cache)."""
    keys = [f"{kind}_{r}_kib" for r in rates] + [f"{kind}_sat_kib"]
    per_round = defaultdict(float)
    for r, row in rounds.items():
        for k in keys:
            if (path, k) in row:
                per_round[r] = max(per_round[r], float(row[(path, k)]))
    return [v / 1024 for v in per_round.values()]


out = []
w = out.append
w(f"## Agent cost, {env['RUN_DATE']}\n")
w(
    # Prebuilt binaries (TRACEMESH_BIN, SINK_BIN) are named as such: the tree's
    # commit is then not necessarily what was measured.
    f"Command: `{'TRACEMESH_BIN=<a release build> SINK_BIN=<its otlp_sink> ' if env.get('GIVEN_BINS') else ''}"
    f"{env.get('KNOBS', '')}ROUNDS={env['ROUNDS']} MODE=cost bash bench/agent/run.sh` (tracemesh {'tree at ' if env.get('GIVEN_BINS') else ''}`{env['COMMIT']}{env.get('DIRTY', '')}`"
    + (f", binary sha256 `{env['BIN_SHA']}…`" if env.get("BIN_SHA") else "")
    + (f", baseline {env['BASELINE_NOTE']} as `BASELINE=<its binary>`" if env.get("BASELINE_NOTE") else "")
    + (f" (sha256 `{env['BASE_SHA']}…`)" if env.get("BASE_SHA") else "")
    + f"), {env['ROUNDS']} interleaved rounds; each cell is the median of the rounds, their range in brackets.\n"
)
w(f"- Machine: {env['CPU_MODEL']}, {env['CORES']} cores, {env['MEMORY']}, Linux {env['KERNEL']}.")
w(f"- Machine load (1/5/15-min averages): {env['LOAD_BEFORE']} before, {env['LOAD_AFTER']} after.")
w(f"- Versions: Envoy {env['ENVOY_VERSION']}, nginx {env['NGINX_VERSION']}, {env['RUSTC_VERSION']}.")
w(
    f"- Fixed rates: `tracemesh load -c {env['LATENCY_CONNECTIONS']} --qps R -t {env['COST_DURATION']}` "
    f"to `/1k` (1 KiB responses), R in {', '.join(rates)}; CPU is the proxy's threads' time on CPU "
    "(`/proc/PID/task/*/schedstat`, nginx master + worker) over the run, per 1000 req/s achieved."
)
w(
    f"- Saturation: `wrk -t1 -c{env['WRK_CONNECTIONS']} -d{env['WRK_DURATION']}` to `/1k`; spans "
    "delivered = spans the sink received for the proxy's service once no new span arrived for 3 s, "
    "over the requests wrk completed."
)
w(f"- Idle: every proxy idle at once for {env['IDLE_SECONDS']} s at the start of each round.")
w(f"- CPU pinning: {env['PIN_NOTE']}\n")

head = ["path"]
for r in rates:
    head += [f"vCPU per 1000 req/s at {r}", f"p50 / p99 at {r} (ms)"]
head += ["saturation (req/s)", "spans delivered at saturation", "spans dropped (counted)",
         "RSS under load, peak (MiB)", "of it anonymous, peak (MiB)", "idle CPU (% of a core)",
         "RSS idle (MiB)"]
w("| " + " | ".join(head) + " |")
w("|---" + "|---:" * (len(head) - 1) + "|")
for p in paths:
    row = [LABELS[p]]
    for r in rates:
        row.append(cell(p, f"vcpu_per_1k_{r}", "{:.3f}"))
        row.append(f"{cell(p, f'p50_us_{r}', '{:.2f}', 1e-3)} / {cell(p, f'p99_us_{r}', '{:.2f}', 1e-3)}")
    row.append(cell(p, "sat_rps", "{:,.0f}"))
    row.append(delivered_cell(p) if p not in ("nginx", "hyper_floor") else "—")
    row.append(cell(p, "sat_dropped", "{:,.0f}") if p.startswith("agent") else "—")
    for kind in ("rss", "anon"):
        rl = rss_load(p, kind)
        row.append(f"{statistics.median(rl):.1f} ({min(rl):.1f}–{max(rl):.1f})" if rl else "—")
    row.append(cell(p, "idle_cpu_pct", "{:.3f}%"))
    row.append(cell(p, "idle_rss_kib", "{:.1f}", 1 / 1024))
    w("| " + " | ".join(row) + " |")

w("\nTargets (issue 18), per tracemesh build:\n")
low, high = rates[0], rates[-1]
for p in [x for x in paths if x.startswith("agent")]:
    label = LABELS[p]
    checks = []
    a, n = med(p, f"vcpu_per_1k_{low}"), med("nginx", f"vcpu_per_1k_{low}")
    if a is not None and n is not None:
        checks.append((a <= n, f"vCPU per 1000 req/s at {low} at most nginx's: {a:.3f} vs {n:.3f}"))
    # For scale, at every rate: what the agent spends above the hyper floor.
    above = []
    for r in rates:
        ar, fr = med(p, f"vcpu_per_1k_{r}"), med("hyper_floor", f"vcpu_per_1k_{r}")
        if ar is not None and fr is not None:
            above.append(f"{fr:.3f} at {r} req/s ({ar - fr:+.3f} the agent's own work)")
    if above:
        checks.append((None, f"(for scale, not a target: the hyper floor spends {'; '.join(above)})"))
    a, e = med(p, f"p99_us_{high}"), med("envoy_default", f"p99_us_{high}")
    if a is not None and e is not None:
        checks.append((a <= e, f"p99 at {high} req/s at most Envoy's: {a / 1000:.2f} ms vs {e / 1000:.2f} ms"))
    d = delivered(p)
    if d:
        sat, es = med(p, "sat_rps"), med("envoy_default", "sat_rps")
        checks.append((statistics.median(d) >= 99, f"at least 99% of spans delivered at saturation: {statistics.median(d):.1f}%"))
        if es:
            checks.append((sat >= 2 * es, f"saturation at least 2× Envoy's: {sat:,.0f} vs {es:,.0f} req/s ({sat / es:.1f}×)"))
    rl = rss_load(p)
    if rl:
        mib = statistics.median(rl)
        anon = rss_load(p, "anon")
        of_it = f"; anonymous {statistics.median(anon):.1f} MiB of it" if anon else ""
        checks.append((mib * 1.048576 <= 25, f"RSS under load at most 25 MB: {mib * 1.048576:.1f} MB ({mib:.1f} MiB{of_it})"))
    i = med(p, "idle_cpu_pct")
    if i is not None:
        checks.append((i < 0.1, f"idle CPU under 0.1% of a core: {i:.3f}%"))
    w(f"- {label}:")
    for ok, text in checks:
        w(f"  - {text}" if ok is None else f"  - {'met' if ok else '**missed**'}: {text}")

pair = env.get("PAIRED_PATHS", "").split()
if len(pair) == 2:
    first, second = pair
    w(f"\n{LABELS[first]} against {LABELS[second]}, measured at the same time (`PAIRED`: both loaded at once, "
      "so both share the machine's neighbours; the ratio is the first's CPU per request over the second's):\n")
    for r in sorted({k[1].rsplit("_", 1)[1] for k in cells if k[1].startswith("paired_")}, key=int):
        a, b = cells.get((first, f"paired_vcpu_per_1k_{r}")), cells.get((second, f"paired_vcpu_per_1k_{r}"))
        if a and b:
            ratios = [x / y for x, y in zip(a, b) if y]
            ratio = statistics.median(ratios)
            w(
                f"- at {r} req/s: {statistics.median(a):.3f} vs {statistics.median(b):.3f} vCPU per 1000 req/s; "
                f"ratio {ratio:.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})"
            )
            if first.startswith("agent") and second == "nginx" and r == low:
                below = sum(x <= 1 for x in ratios)
                verdict = "met" if ratio <= 1 else "**missed**"
                w(f"  - {verdict} (target 1, paired): at most nginx's by the median ratio; "
                  f"at or below it in {below} of {len(ratios)} rounds")

w("\n<details><summary>Every round</summary>\n")
w("| round | path | measure | value |")
w("|---:|---|---|---:|")
for r in sorted(rounds):
    for (p, k), v in rounds[r].items():
        w(f"| {r} | {p} | {k} | {v} |")
w("\n</details>")
open(env["OUT_FILE"], "w").write("\n".join(out) + "\n")
print("\n".join(out))
