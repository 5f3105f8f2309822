#!/usr/bin/env python3
"""Runs every benchmark, then writes what they measured.

    python3 scripts/performance.py               # everything (about 15 minutes here)
    python3 scripts/performance.py --skip-run    # rewrite from docs/performance.json
    python3 scripts/performance.py --only storm  # rerun one part, keep the rest

Runs, in turn: the hot-path criterion bench (one and two threads), the
paired hot-path ratios (benches/hot_path_pairs.rs), the callgrind
instruction counts (scripts/count-instructions.sh), the allocation test,
the refresh storms, the loopback throughput bench and its gRPC
counterpart. Writes:

- docs/performance.json: every figure, with the machine it came from;
- docs/performance.svg: a chart of the hot path, drawn here by hand (no
  plotting package needed);
- README.md: the tables between the `performance:begin/end` markers.

Needs python3 (standard library only), cargo and valgrind.
"""

import json
import os
import math
import platform
import re
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "performance.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"

VARIANTS = [
    ("bare", "bare inner service"),
    ("static_header", "tower-http `AddAuthorization::bearer` (static header)"),
    ("static_header_with_head_copy", "static header + copy of the request head"),
    ("rwlock", "`RwLock<String>` bearer layer"),
    ("mutex", "`Mutex<String>` bearer layer"),
    ("token_refresh", "**this layer, reactive retry on (default)**"),
    ("token_refresh_no_retry", "**this layer, reactive retry off**"),
]
# What each variant is compared with in the tables.
BASELINE = {
    "token_refresh": "static_header_with_head_copy",
    "token_refresh_no_retry": "static_header",
    "rwlock": "static_header",
    "mutex": "static_header",
    "static_header_with_head_copy": "static_header",
}


def run(*command, env=None):
    """Runs `command` in the repository; returns its stdout."""
    print("+", " ".join(command), file=sys.stderr, flush=True)
    merged = dict(os.environ, **(env or {}))
    done = subprocess.run(command, cwd=ROOT, env=merged, check=True,
                          stdout=subprocess.PIPE, text=True)
    return done.stdout


def key_values(line):
    """`a=1 b=x` -> {"a": 1.0, "b": "x"}."""
    pairs = dict(re.findall(r"(\w+)=(\S+)", line))
    for key, value in pairs.items():
        try:
            pairs[key] = float(value)
        except ValueError:
            pass
    return pairs


# This machine's speed drifts by up to 1.5x over tens of seconds whatever
# the load, and criterion measures one variant after another: variants
# measured a minute apart are not comparable. The absolute times are the
# median of short rounds; the ratios come from the paired bench.
ROUNDS = 5


def hot_path():
    rounds = []
    for _ in range(ROUNDS):
        run("cargo", "bench", "--bench", "hot_path", "--",
            "--warm-up-time", "0.5", "--measurement-time", "2")
        medians = {}
        for group in ("hot_path", "hot_path_2_threads"):
            for name, _ in VARIANTS:
                path = ROOT / "target/criterion" / group / name / "new/estimates.json"
                estimate = json.loads(path.read_text())["median"]["point_estimate"]
                medians.setdefault(name, {})[group] = estimate
        rounds.append(medians)
    return {"rounds": rounds,
            "median": {name: {group: median([r[name][group] for r in rounds])
                              for group in ("hot_path", "hot_path_2_threads")}
                       for name, _ in VARIANTS}}


# A process's address-space layout (randomised afresh each run) moves the
# layer's time against its baselines: one binary gave the layer's paired
# one-thread ratios anywhere from 0.85 to 1.01 x the floor from one process
# to the next, the same in every round of a process. So the paired bench
# runs in several processes, and each ratio is the median of their medians.
# Eleven, not five: in 21 processes of one binary in a row, the layer's
# one-thread ratio to the RwLock layer ran from 1.00 to 1.25, and the median
# of five moves by more than the margins the targets are judged by.
PAIR_PROCESSES = 11


def pairs():
    """Drift-cancelling ratios: each pair run in alternating chunks, in
    PAIR_PROCESSES processes."""
    processes = [pairs_once() for _ in range(PAIR_PROCESSES)]
    found = {"processes": processes, "rounds": processes[0]["rounds"],
             "chunk": processes[0]["chunk"], "pair": {}, "scaling": {}, "clone": {}}
    for kind in ("pair", "scaling", "clone"):
        for key in processes[0][kind]:
            medians = [p[kind][key]["median"] for p in processes]
            found[kind][key] = {"median": median(medians),
                                "low": min(medians), "high": max(medians)}
    return found


def pairs_once():
    out = run("cargo", "bench", "--bench", "hot_path_pairs")
    found = {"pair": {}, "scaling": {}, "clone": {}}
    for kind, line in re.findall(r"^(pair|scaling|clone) (.*)$", out, re.M):
        fields = key_values(line)
        found["rounds"], found["chunk"] = int(fields["rounds"]), int(fields["chunk"])
        if kind == "pair":
            key = f"{fields['variant']}/{fields['baseline']}/{fields['threads']:g}"
        else:
            key = fields["variant"]
        found[kind][key] = {k: fields[k] for k in ("median", "q1", "q3")}
    return found


def pair(data, name, base, threads=1):
    """name's time over base's, from the paired runs: the median over
    processes, and the lowest and highest process."""
    found = data["pairs"]["pair"][f"{name}/{base}/{threads}"]
    return found["median"], found["low"], found["high"]


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def instructions():
    out = run("bash", "scripts/count-instructions.sh")
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}


def allocations():
    out = run("cargo", "test", "--test", "allocations", "--", "--nocapture")
    tables, current = {}, None
    for line in out.splitlines():
        if line.startswith("empty body"):
            current = tables.setdefault("empty", {})
        elif line.startswith("1 KiB body"):
            current = tables.setdefault("1KiB", {})
        elif re.match(r"^\d+ requests in flight", line):
            current = tables.setdefault("burst", {})
            tables["burst_size"] = int(line.split()[0])
        elif current is not None:
            m = re.match(r"^(\w+)\s+([\d.]+)\s+([\d.]+)$", line)
            if m:
                current[m[1]] = {"allocations": float(m[2]), "bytes": float(m[3])}
    return tables


# A storm's added latency moves by tens of milliseconds from one burst to
# the next (the expired storm's p99 added took 19 to 157 ms in nine runs of
# one process): one burst decides nothing. The bench runs each storm
# STORM_RUNS times, each run with its own baseline and floor, and prints
# the median of each figure; the runs' own p99 added are kept too. 45 runs
# put the median's 95 % interval between the 16th and the 30th of them
# (15 runs: the 4th and the 12th); a run takes about a second.
STORM_RUNS = 45


def median_rank(n, confidence=0.95):
    """The order statistic (1-based) whose pair, the k-th lowest and the
    k-th highest of n draws, holds the population's median with at least
    `confidence`, whatever the distribution: the largest k with
    P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. 0 when n is too small
    for any pair to reach it (under 6 draws for 95 %)."""
    tail = (1 - confidence) / 2
    below, k = 0.0, 0
    for i in range(n):
        below += math.comb(n, i) / 2 ** n
        if below > tail:
            break
        k = i + 1
    return k


# The textbook ranks (k = 4 of 15, 16 of 45); checked here so that a wrong
# interval cannot reach the README.
assert (median_rank(5), median_rank(6), median_rank(15), median_rank(45)) == (0, 1, 4, 16)


def median_interval(values):
    """(low, high): the 95 % interval for the median of what `values`
    were drawn from, or None when there are too few of them."""
    ordered, k = sorted(values), median_rank(len(values))
    return (ordered[k - 1], ordered[-k]) if k else None


def lag1_autocorrelation(values):
    """The correlation of each value with the next, in run order: about
    0 for independent runs (within +-2/sqrt(n) in about 95 % of sets),
    over 0 when neighbouring runs resemble each other (as drift makes
    them), under 0 when they alternate."""
    mean = sum(values) / len(values)
    spread = sum((v - mean) ** 2 for v in values)
    pairs = sum((a - mean) * (b - mean) for a, b in zip(values, values[1:]))
    return pairs / spread if spread else 0.0


# Alternating runs correlate at -0.75 with their next; a steady rise at 0.25.
assert (lag1_autocorrelation([1, -1, 1, -1]), lag1_autocorrelation([1, 2, 3, 4])) == (-0.75, 0.25)


def storms():
    out = run("cargo", "bench", "--bench", "storm", env={"STORM_RUNS": str(STORM_RUNS)})
    found = {}
    for name, line in re.findall(r"^storm (\w+): (.*)$", out, re.M):
        summary = key_values(line)
        # One run prints one number, which key_values reads as a float.
        runs = str(summary["runs_added_p99_ms"]).split("/")
        summary["runs_added_p99_ms"] = [float(v) for v in runs]
        # The runs' own lines: how far each run's p99 added was from its
        # own target, and what the layer added over its own floor. One
        # median of a figure this noisy says little; the interval says how
        # far the median itself may be off.
        each = [key_values(run_line) for run_line in
                re.findall(rf"^storm {name} run=\d+: (.*)$", out, re.M)]
        margins = [r["added_p99_ms"] - r["target_p99_ms"] for r in each]
        summary["margin_p99_ms"] = median(margins)
        summary["margin_interval_ms"] = median_interval(margins)
        # The intervals assume independent runs: the margins in run order
        # show how far they are from it.
        summary["margins_ms"] = margins
        summary["margin_lag1"] = lag1_autocorrelation(margins)
        # The floor against the same target: where its interval is over
        # zero, no layer could meet the target on this machine.
        floor_margins = [r["floor_added_p99_ms"] - r["target_p99_ms"] for r in each]
        summary["floor_margin_p99_ms"] = median(floor_margins)
        summary["floor_margin_interval_ms"] = median_interval(floor_margins)
        for figure in ("over_floor_p99_ms", "outside_over_floor_p99_ms"):
            if all(figure in r for r in each):
                summary[figure.replace("_p99_ms", "_interval_ms")] = median_interval(
                    [r[figure] for r in each])
        # The CPU time the storm's burst took over its floor's, every thread
        # of the process (client and servers): work the layer made.
        if all("cpu_over_floor_ms" in r for r in each):
            summary["cpu_over_floor_interval_ms"] = median_interval(
                [r["cpu_over_floor_ms"] for r in each])
        found[name] = summary
    return found


# Rounds of the herd bench, each a waiting and a parked herd.
HERD_ROUNDS = 31


def herd():
    """What waiting for a refresh costs a request in the layer, without
    HTTP: a herd of requests waiting for one refresh against the same herd
    parked on timers (benches/herd.rs), with 95 % intervals of the medians
    of the per-round differences."""
    out = run("cargo", "bench", "--bench", "herd", env={"HERD_ROUNDS": str(HERD_ROUNDS)})
    found = key_values(re.search(r"^herd: (.*)$", out, re.M)[1])
    rounds = [key_values(line) for line in re.findall(r"^herd round=\d+: (.*)$", out, re.M)]
    cpu_us = [(r["waiting_cpu_ms"] - r["parked_cpu_ms"]) * 1e3 / found["requests"]
              for r in rounds]
    wall_ms = [r["waiting_wall_ms"] - r["parked_wall_ms"] for r in rounds]
    found.update(
        cpu_over_parked_us=median(cpu_us),
        cpu_over_parked_interval_us=median_interval(cpu_us),
        wall_over_parked_ms=median(wall_ms),
        wall_over_parked_interval_ms=median_interval(wall_ms),
    )
    return found


def interval_text(interval, digits=1):
    """` [low, high]` (to `digits` decimals), or nothing without an
    interval."""
    if not interval:
        return ""
    low, high = interval
    return f" [{low:+.{digits}f}, {high:+.{digits}f}]"


def storm_verdict(storm):
    """met when the whole 95 % interval of the median margin (p99 added
    minus the target, run by run) is at or under zero, missed when all of
    it is over, and unresolved when it straddles zero: the runs then cannot
    tell either way. Without an interval (an older run's data), the median
    alone decides."""
    interval = storm.get("margin_interval_ms")
    if interval is None:
        return "met" if storm["target_met"] == "true" else "missed"
    low, high = interval
    return "met" if high <= 0 else "missed" if low > 0 else "unresolved: not met"


# The throughput ratio moves with the process too: four processes of the
# same binary gave 0.963 to 0.987 (9 rounds each). So it is measured in
# several, and each figure is the median over them.
THROUGHPUT_PROCESSES = 5


def throughput():
    """Requests per second with and without the layer, and their ratio:
    medians over THROUGHPUT_PROCESSES processes of 15 rounds each."""
    processes = []
    for _ in range(THROUGHPUT_PROCESSES):
        out = run("cargo", "bench", "--bench", "throughput", env={"THROUGHPUT_ROUNDS": "15"})
        processes.append(key_values(re.search(r"^throughput: (.*)$", out, re.M)[1]))
    found = {key: median([p[key] for p in processes])
             for key in ("without_layer_rps", "static_header_rps", "with_layer_rps",
                         "ratio", "ratio_to_static_header")}
    ratios = [p["ratio"] for p in processes]
    found.update(processes=processes, rounds=processes[0]["rounds"],
                 ratio_low=min(ratios), ratio_high=max(ratios))
    return found


def grpc_throughput():
    """Unary gRPC calls per second through a tonic channel with and without
    the layer, and their ratio: medians over THROUGHPUT_PROCESSES processes
    of 15 rounds each."""
    processes = []
    for _ in range(THROUGHPUT_PROCESSES):
        out = run("cargo", "bench", "--features", "tonic", "--bench", "grpc_throughput",
                  env={"THROUGHPUT_ROUNDS": "15"})
        processes.append(key_values(re.search(r"^grpc_throughput: (.*)$", out, re.M)[1]))
    found = {key: median([p[key] for p in processes])
             for key in ("without_layer_cps", "with_layer_cps", "ratio")}
    ratios = [p["ratio"] for p in processes]
    found.update(processes=processes, rounds=processes[0]["rounds"],
                 ratio_low=min(ratios), ratio_high=max(ratios))
    return found


def grpc_instructions():
    """CPU per call through each gRPC client, by callgrind: (Ir(2N) - Ir(N)) / N."""
    run("cargo", "bench", "--no-run", "--features", "tonic", "--bench", "grpc_throughput")
    out = run("bash", "-c",
              "ls -t target/release/deps/grpc_throughput-* | grep -v '\\.d$' | head -1")
    return callgrind_per_request(out.strip(), "GRPC_COUNT", ("without", "with"))


def callgrind_per_request(binary, variable, clients):
    """For each client, the instructions `binary` runs per request, as
    `variable=CLIENT:N` makes it send N: (Ir(2000) - Ir(1000)) / 1000."""
    counts = {}
    for client in clients:
        totals = []
        for n in (1000, 2000):
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", binary],
                cwd=ROOT, env=dict(os.environ, **{variable: f"{client}:{n}"}),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            totals.append(int(re.search(r"Collected : (\d+)", done.stderr)[1]))
        counts[client] = (totals[1] - totals[0]) // 1000
    return counts


def throughput_instructions():
    """CPU per request through each client, by callgrind: (Ir(2N) - Ir(N)) / N."""
    run("cargo", "bench", "--no-run", "--bench", "throughput")
    out = run("bash", "-c", "ls -t target/release/deps/throughput-* | grep -v '\\.d$' | head -1")
    return callgrind_per_request(out.strip(), "THROUGHPUT_COUNT", ("without", "static", "with"))


def machine():
    cpu = "unknown CPU"
    try:
        # The first processor's fields. A virtual machine may name only the
        # brand ("AMD EPYC"); its family and model tell the generation.
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields and "model" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    except OSError:
        pass
    rustc = run("rustc", "--version").strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "rustc": rustc,
        "load_at_start": round(load, 2),
    }


def ns(value):
    return f"{value:,.0f}"


def scaling(data, name):
    """One-thread time over two-thread time per request, from the paired runs."""
    return data["pairs"]["scaling"][name]["median"]


def relative_scaling(data, name, base):
    """How much better `name` scales than `base` from one thread to two,
    from the pairs at each thread count: in each process, name's time over
    base's on one thread, over the same on two (above 1: name scales
    better). Both variants of a pair run under the same load, so the load
    on the machine, which moves a variant's own two-thread time against its
    one-thread time by tenths (single processes gave scalings past 2.0),
    cancels. The median over processes, and the lowest and highest."""
    values = [p["pair"][f"{name}/{base}/1"]["median"] / p["pair"][f"{name}/{base}/2"]["median"]
              for p in data["pairs"]["processes"]]
    return median(values), min(values), max(values)


def criterion_ratio(data, name, base, column="hot_path"):
    """name's criterion median over base's: the bench's medians, taken one
    variant after another."""
    hot = data["hot_path"]["median"]
    return hot[name][column] / hot[base][column]


def clone_cost(data, name):
    """Two-thread time through a clone made per request over the time
    through each thread's own clone, from the paired runs."""
    return data["pairs"]["clone"][name]["median"]


def ratio(data, name, column):
    base = BASELINE.get(name)
    if base is None:
        return ""
    if column == "instructions":
        value = data["instructions"][name] / data["instructions"][base]
    else:
        value = pair(data, name, base, 1 if column == "hot_path" else 2)[0]
    return f"{value:.2f} × {'floor' if base == 'static_header_with_head_copy' else 'static'}"


def latest_reruns(data):
    """The partial reruns, each section under the latest one that ran it:
    an older figure of a section rerun since is no longer in the tables."""
    seen, kept = set(), []
    for rerun in reversed(data.get("reruns", [])):
        sections = [s for s in rerun["sections"] if s not in seen]
        seen.update(sections)
        if sections:
            kept.append({**rerun, "sections": sections})
    return list(reversed(kept))


def tables(data):
    hot, count = data["hot_path"]["median"], data["instructions"]
    rows = {name: {"instructions": count[name], **hot[name]} for name, _ in VARIANTS}
    lines = [
        f"Measured on {data['machine']['cpu']}, {data['machine']['cores']} cores, "
        f"{data['machine']['os']}, {data['machine']['rustc']} (load average "
        f"{data['machine']['load_at_start']} at the start: the machine is shared)."
        + "".join(f" Rerun since: {', '.join(r['sections'])} ("
                  + (f"on {r['machine']['cpu']}, another machine; "
                     if r["machine"]["cpu"] != data["machine"]["cpu"] else "")
                  + f"load average {r['machine']['load_at_start']} at the start)."
                  for r in latest_reruns(data))
        + " Reproduce with `python3 scripts/performance.py`.",
        "",
        "**Hot path**, one request with a fresh token through `ServiceBuilder` + "
        "layer + a no-op service (`benches/hot_path.rs`). Instructions per request "
        "are counted by callgrind (repeatable). Times are criterion medians from "
        f"{ROUNDS} rounds of the whole bench (2 s per variant). A shared "
        "machine's speed drifts over tens of seconds, so the ratios do not "
        "come from those medians: `benches/hot_path_pairs.rs` runs the two "
        f"variants of each ratio in alternating chunks of {data['pairs']['chunk']:,} "
        f"requests, {data['pairs']['rounds']} rounds; a process's ratio is the "
        "median of its per-round ratios, and since a process's memory layout "
        "moves the layer's time against its baselines, each ratio here is the "
        f"median over {len(data['pairs']['processes'])} processes (each process's figures are in "
        "docs/performance.json). With two threads, each thread "
        "has a clone of one service; the time is per request over both threads, "
        "and scaling is the one-thread time over it, paired the same way (2.00 "
        "is perfect). *Clone per request*: on two threads, the time of a request "
        "sent through a clone of the service made for it "
        "(`client.clone().oneshot(request)`) over one sent through the thread's "
        "own clone, paired the same way.",
        "",
        "| variant | instructions | ratio (instructions) | median, 1 thread | ratio, 1 thread (paired) "
        "| median, 2 threads | ratio, 2 threads (paired) | scaling | clone per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in VARIANTS:
        r = rows[name]
        scales = scaling(data, name)
        lines.append(
            f"| {label} | {r['instructions']} | {ratio(data, name, 'instructions')} "
            f"| {ns(r['hot_path'])} ns | {ratio(data, name, 'hot_path')} "
            f"| {ns(r['hot_path_2_threads'])} ns | {ratio(data, name, 'hot_path_2_threads')} "
            f"| {scales:.2f} | {clone_cost(data, name):.2f} × |")
    lines += ["", "![hot path chart](docs/performance.svg)", ""]

    alloc = data["allocations"]
    lines += [
        "**Allocations** per request (`tests/allocations.rs`, a counting global "
        "allocator; the inner service reads the body). *In flight at once*: rounds "
        "of requests all sent before any is answered, past the 16 whose retry "
        "copies a thread's spare buffers cover (as when responses finish on "
        "another thread than they were sent from); the box each future is kept "
        "in there is not counted:",
        "",
        "| variant | empty body: allocations | bytes | 1 KiB body: allocations | bytes "
        f"| {alloc['burst_size']} in flight at once: allocations | bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in VARIANTS:
        e, k, b = alloc["empty"][name], alloc["1KiB"][name], alloc["burst"][name]
        lines.append(f"| {label} | {e['allocations']:g} | {e['bytes']:g} "
                     f"| {k['allocations']:g} | {k['bytes']:g} "
                     f"| {b['allocations']:g} | {b['bytes']:g} |")

    lines += [
        "",
        "**Refresh storms** on loopback servers (`benches/storm.rs`): 10,000 "
        "requests arriving with an expired token, and 10,000 requests in flight "
        "when the server revokes their token. Every burst arrives at one "
        "instant (its requests wait at a gate that opens once all are built and "
        "waiting at it) "
        "and each request is timed from it. *Added* latency is the storm's "
        "latency minus that of the same burst with a fresh token, per "
        "percentile; *outside the client* is each request's time minus the time "
        "its attempts spent in the HTTP client. The refresh round trip includes "
        "a simulated 50 ms network delay. The *floor* is the same burst with "
        "no token logic: for the expired storm, every request is first parked "
        "until one refresh round trip after the burst's first request arrived; "
        "for the revoked storm, every request is first sent with a token the "
        "API rejects (its own `Authorization`, passed through untouched) and "
        "sent again one refresh round trip after the first rejection came back "
        "(either is the earliest a refresh can start). It is what one refresh's wait "
        "and then sending 10,000 requests at once cost on this machine; *over "
        "the floor* is what the layer adds beyond it. Each storm ran "
        f"{data['storm']['expired']['runs']:g} times, each run with its own baseline and floor taken "
        "moments apart; each figure is the median over the runs (the range of "
        "the runs' p99 added is in the targets below). In brackets, the 95 % interval of "
        "a median: the runs' order statistics that hold the median of what "
        "they were drawn from with at least 95 % probability, whatever its "
        "distribution, if the runs are independent (they run back to back in "
        "one process, on a machine whose speed drifts over tens of seconds: "
        "the check below the table says how far from independent they were). A target is met when the whole interval of the median "
        "margin (each run's p99 added minus its own target) is at or under "
        "zero, missed when all of it is over, and unresolved when it "
        "straddles zero.",
        "",
        "| storm | refresh calls | failures | refresh round trip | added p50 / p99 / max "
        "| outside the client p50 / p99 / max | floor added p99 | over the floor p99 "
        "| p99 ≤ round trip + 1 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in data["storm"].items():
        lines.append(
            f"| {name} | {s['refresh_calls']:g} | {s['failures']:g} | {s['rtt_ms']:.1f} ms "
            f"| {s['added_p50_ms']:.1f} / {s['added_p99_ms']:.1f} / {s['added_max_ms']:.1f} ms "
            f"| {s['outside_client_p50_ms']:.1f} / {s['outside_client_p99_ms']:.1f} / "
            f"{s['outside_client_max_ms']:.1f} ms | {s['floor_added_p99_ms']:.1f} ms "
            f"| {s['over_floor_p99_ms']:.1f} ms{interval_text(s.get('over_floor_interval_ms'))} "
            f"| {storm_verdict(s)} |")
    notes = []
    for name, s in data["storm"].items():
        if s.get("floor_margin_interval_ms"):
            notes.append(
                f"the {name} storm's floor alone, against the same target: "
                f"{s['floor_margin_p99_ms']:+.1f} ms"
                f"{interval_text(s['floor_margin_interval_ms'])}")
        if s.get("outside_over_floor_interval_ms"):
            notes.append(
                f"its p99 outside the client over the floor's (the layer letting its "
                f"waiters go against timers doing it, without the baseline's noise): "
                f"{s['outside_over_floor_p99_ms']:+.1f} ms"
                f"{interval_text(s['outside_over_floor_interval_ms'])}")
        if s.get("cpu_over_floor_interval_ms"):
            notes.append(
                f"its burst's CPU time (every thread: client, layer and servers) over "
                f"the floor's: {s['cpu_over_floor_ms']:+.1f} ms"
                f"{interval_text(s['cpu_over_floor_interval_ms'])}")
    if notes:
        lines += ["", "Medians over the runs, with their 95 % intervals: "
                  + "; ".join(notes) + "."]
    checked = {name: s for name, s in data["storm"].items() if "margin_lag1" in s}
    if checked:
        runs = min(len(s["margins_ms"]) for s in checked.values())
        each = " and ".join(f"{s['margin_lag1']:+.2f} ({name})" for name, s in checked.items())
        lines += [
            "",
            "Independence, checked: each run's margin correlates with the next "
            f"run's at {each}; for independent runs this falls within "
            f"±{2 / math.sqrt(runs):.2f} in about 95 % of sets. Over zero, "
            "neighbouring runs resemble each other (as drift makes them) and the "
            "intervals are narrower than they should be; under zero, runs "
            "alternate (the order of a run's three bursts rotates with a period "
            "of three) and the intervals are wider than they need be.",
        ]
    h = data.get("herd")
    if h:
        lines += [
            "",
            f"**Herd**, the layer's part of the expired storm without HTTP "
            f"(`benches/herd.rs`): {h['requests']:,.0f} requests arriving at once through "
            "the layer over a service that answers at once (and clones as a "
            "hyper-util client does), on two workers, all waiting for one "
            "refresh that takes 20 ms, against the same herd through the same "
            "layer with its token there, each request first parked on a timer "
            "until 20 ms after the gate opened. Medians over "
            f"{h['rounds']:g} rounds, with the 95 % intervals of the per-round "
            f"differences: waiting costs {h['cpu_over_parked_us']:.2f} µs of CPU a request "
            f"more{interval_text(h['cpu_over_parked_interval_us'], 2)} "
            f"({h['waiting_cpu_ms']:.1f} against {h['parked_cpu_ms']:.1f} ms for the herd), "
            f"and the herd's last answer comes {h['wall_over_parked_ms']:+.1f} ms "
            f"later{interval_text(h['wall_over_parked_interval_ms'])} "
            f"({h['waiting_wall_ms']:.1f} against {h['parked_wall_ms']:.1f} ms).",
        ]

    t = data["throughput"]
    ti = data.get("throughput_instructions")
    lines += [
        "",
        "**Throughput** over loopback, 16 tasks through a hyper-util client "
        f"(`benches/throughput.rs`; a process's ratio is the median of its "
        f"{t['rounds']:g} per-round ratios; each figure here is the median over "
        f"{len(t['processes'])} processes, whose ratios ran from {t['ratio_low']:.3f} "
        f"to {t['ratio_high']:.3f}; medians taken one by one, so the ratio need not "
        f"be the quotient of the requests per second):",
        "",
        "| client | requests/s | ratio |",
        "|---|---:|---:|",
        f"| without the layer | {t['without_layer_rps']:,.0f} | 1.00 |",
        f"| static header (tower-http) | {t['static_header_rps']:,.0f} | |",
        f"| **with the layer** | **{t['with_layer_rps']:,.0f}** | **{t['ratio']:.3f}** |",
    ]
    if ti:
        lines += [
            "",
            "CPU per request on the same path, counted by callgrind "
            "(`THROUGHPUT_COUNT=CLIENT:N`, one thread, client and server together): "
            f"without the layer {ti['without']:,} instructions, static header "
            f"{ti['static']:,} ({ti['static'] / ti['without']:.3f} ×), with the layer "
            f"{ti['with']:,} ({ti['with'] / ti['without']:.3f} ×).",
        ]
    g = data.get("grpc_throughput")
    if g:
        lines += [
            "",
            "**gRPC** (no target of its own; the same measure as above): unary calls "
            "over loopback, 16 tasks through a tonic `Channel` to a tonic server that "
            "checks each call's token (`benches/grpc_throughput.rs`); without the layer, "
            "the same token added by a tonic interceptor. Medians over "
            f"{len(g['processes'])} processes of {g['rounds']:g} rounds, whose ratios ran "
            f"from {g['ratio_low']:.3f} to {g['ratio_high']:.3f}; medians taken one by one, "
            "so the ratio need not be the quotient of the calls per second. Spread this "
            "wide, the throughput cannot show what the layer costs a call; the CPU count "
            "below does:",
            "",
            "| client | calls/s | ratio |",
            "|---|---:|---:|",
            f"| without the layer (interceptor) | {g['without_layer_cps']:,.0f} | 1.00 |",
            f"| **with the layer** | **{g['with_layer_cps']:,.0f}** | **{g['ratio']:.3f}** |",
        ]
    gi = data.get("grpc_instructions")
    if gi:
        lines += [
            "",
            "CPU per call, counted by callgrind (`GRPC_COUNT=CLIENT:N`, one thread, client "
            f"and server together): without the layer {gi['without']:,} instructions, with "
            f"the layer {gi['with']:,} ({gi['with'] / gi['without']:.3f} ×, "
            f"{gi['with'] - gi['without']:+,} a call).",
        ]
    lines += ["", targets(data)]
    return "\n".join(lines)


# "Clearly better" scaling, made a number: ours at least 1 + CLEARLY times
# a lock layer's, by either estimator. It applies to the medians over the
# processes: single processes' scalings spread by several tenths, and a
# lead of a few hundredths between medians says nothing.
CLEARLY = 0.10


def targets(data):
    count = data["instructions"]
    s = data["storm"]
    t = data["throughput"]

    def row(target, measured, estimators=None, verdict=None):
        """A target's line: `estimators` maps each estimator to its checks;
        met when every estimator passes all of its own, missed when none
        does, mixed (not met) when they disagree. A `verdict` given is
        used as it is."""
        if verdict is None:
            passed = [all(checks) for checks in estimators.values()]
            verdict = ("met" if all(passed) else "missed" if not any(passed)
                       else "mixed: not met")
        return f"| {target} | {measured} | {verdict} |"

    def time_ratio(name, base, line):
        """The instruction, paired and criterion ratios of name to base, as
        text, and each estimator's check against `line`."""
        by_count = count[name] / count[base]
        paired, low, high = pair(data, name, base)
        sequential = criterion_ratio(data, name, base)
        text = (f"{by_count:.3f} × (instructions), {paired:.3f} × (paired time; "
                f"{low:.2f} to {high:.2f} by process), {sequential:.3f} × (criterion medians)")
        return text, {"instructions": [by_count <= line], "paired": [paired <= line],
                      "criterion": [sequential <= line]}

    on_text, on_met = time_ratio("token_refresh", "static_header_with_head_copy", 1.05)
    off_text, off_met = time_ratio("token_refresh_no_retry", "static_header", 1.10)
    alloc = data["allocations"]["empty"]
    lines = [
        "**Targets**, as measured above (ratios to three decimals, as a target's line may",
        "fall between two-decimal figures). Each target is judged by every estimator in",
        "its row: for times, instructions, paired times and criterion's medians (taken one",
        "variant after another, so the machine's drift falls between them); for scaling,",
        "variants paired at equal thread counts, and each variant paired with itself",
        "across thread counts. It is met when each estimator meets it, missed when none",
        "does, and mixed (not met) when they disagree.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        row("retry on ≤ 1.05 × head-copy floor", on_text, on_met),
        row("retry off ≤ 1.10 × static header", off_text, off_met),
    ]
    for ours, label in (("token_refresh", "retry on"), ("token_refresh_no_retry", "retry off")):
        by_count = [count[ours] < count[lock] for lock in ("rwlock", "mutex")]
        times = {(lock, threads): pair(data, ours, lock, threads)[0]
                 for lock in ("rwlock", "mutex") for threads in (1, 2)}
        sequential = {(lock, threads): criterion_ratio(
                          data, ours, lock, "hot_path" if threads == 1 else "hot_path_2_threads")
                      for lock in ("rwlock", "mutex") for threads in (1, 2)}
        lines.append(row(
            f"{label}: faster than the `RwLock` and `Mutex` layers",
            f"{count[ours]} vs {count['rwlock']} / {count['mutex']} instructions; "
            f"paired time {times['rwlock', 1]:.3f} × / {times['mutex', 1]:.3f} × theirs on one "
            f"thread, {times['rwlock', 2]:.3f} × / {times['mutex', 2]:.3f} × on two; "
            f"criterion medians {sequential['rwlock', 1]:.3f} × / {sequential['mutex', 1]:.3f} × "
            f"and {sequential['rwlock', 2]:.3f} × / {sequential['mutex', 2]:.3f} ×",
            {"instructions": by_count, "paired": [v < 1 for v in times.values()],
             "criterion": [v < 1 for v in sequential.values()]}))
    scale = {n: scaling(data, n) for n in data["hot_path"]["median"]}
    floor = "static_header_with_head_copy"
    for ours, label in (("token_refresh", "retry on"), ("token_refresh_no_retry", "retry off")):
        relative = {base: relative_scaling(data, ours, base) for base in (floor, "rwlock", "mutex")}
        lines.append(row(
            f"{label}, two threads: scale at least as well as the floor, clearly better "
            f"than the locks (at least {1 + CLEARLY:.2f} × theirs)",
            "relative to the floor / RwLock / Mutex (same-thread-count pairs, above 1 is "
            "better): " + " / ".join(
                f"{m:.3f} ({lo:.2f} to {hi:.2f})" for m, lo, hi in relative.values())
            + f"; scaling (each variant paired with itself) {scale[ours]:.3f}, floor "
            f"{scale[floor]:.3f}, RwLock {scale['rwlock']:.3f}, Mutex {scale['mutex']:.3f}",
            # Both as ratios: ours at least the floor's, and 1 + CLEARLY times
            # each lock's.
            {"equal thread counts": [relative[floor][0] >= 1.0,
                                     relative["rwlock"][0] >= 1 + CLEARLY,
                                     relative["mutex"][0] >= 1 + CLEARLY],
             "each variant's own": [scale[ours] >= scale[floor],
                                    scale[ours] >= scale["rwlock"] * (1 + CLEARLY),
                                    scale[ours] >= scale["mutex"] * (1 + CLEARLY)]}))
    on_allocs = alloc["token_refresh"]["allocations"]
    off_allocs = alloc["token_refresh_no_retry"]["allocations"]
    lines.append(row(
        "allocations: retry on ≤ floor, retry off ≤ static header (empty body)",
        f"{on_allocs:g} ≤ {alloc[floor]['allocations']:g} (and ≤ "
        f"{alloc['static_header']['allocations']:g}, the static header), "
        f"{off_allocs:g} ≤ {alloc['static_header']['allocations']:g} (asserted by the test)",
        {"counted": [on_allocs <= alloc[floor]["allocations"],
                     off_allocs <= alloc["static_header"]["allocations"]]}))
    for name, storm in s.items():
        lines.append(row(f"{name} storm: 1 refresh, 0 failures, p99 added ≤ round trip + 1 ms",
                         f"{storm['refresh_calls']:g} refresh, {storm['failures']:g} failures "
                         f"(asserted in every run); median p99 added "
                         f"{storm['added_p99_ms']:.1f} ms vs {storm['target_p99_ms']:.1f} ms "
                         f"(medians taken one by one, so they need not add up: the floor "
                         f"adds {storm['floor_added_p99_ms']:.1f} ms, the layer "
                         f"{storm['over_floor_p99_ms']:.1f} ms over it); the runs' p99 added "
                         f"from {min(storm['runs_added_p99_ms']):.1f} to "
                         f"{max(storm['runs_added_p99_ms']):.1f} ms"
                         + (f", {storm['runs_met']:g} of {storm['runs']:g} within their own "
                            "run's target" if "runs_met" in storm else "")
                         + (f"; median margin over the target, run by run, "
                            f"{storm['margin_p99_ms']:+.1f} ms"
                            f"{interval_text(storm['margin_interval_ms'])}"
                            if storm.get("margin_interval_ms") else ""),
                         verdict=storm_verdict(storm)))
    lines.append(row("throughput ≥ 0.97 × without the layer",
                     f"{t['ratio']:.3f} (median; {t['ratio_low']:.3f} to "
                     f"{t['ratio_high']:.3f} by process)", {"median": [t["ratio"] >= 0.97]}))
    return "\n".join(lines)


def svg(data):
    """A grouped horizontal bar chart: ns per request, one and two threads."""
    hot = data["hot_path"]["median"]
    names = [name for name, _ in VARIANTS]
    labels = {
        "bare": "bare service",
        "static_header": "static header (tower-http)",
        "static_header_with_head_copy": "static header + head copy",
        "rwlock": "RwLock<String> layer",
        "mutex": "Mutex<String> layer",
        "token_refresh": "this layer, retry on",
        "token_refresh_no_retry": "this layer, retry off",
    }
    top = max(max(v.values()) for v in hot.values())
    left, width, row, bar = 210, 460, 44, 15
    height = 70 + row * len(names) + 30
    scale = width / top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">Hot path: median time '
        f'per request (ns), criterion, median of {ROUNDS} rounds</text>',
        f'<rect x="{left}" y="34" width="12" height="10" fill="#4e79a7"/>'
        f'<text x="{left + 16}" y="43">1 thread</text>',
        f'<rect x="{left + 90}" y="34" width="12" height="10" fill="#f28e2b"/>'
        f'<text x="{left + 106}" y="43">2 threads (per request, both threads)</text>',
    ]
    for i, name in enumerate(names):
        y = 60 + i * row
        ours = name.startswith("token_refresh")
        weight = ' font-weight="bold"' if ours else ""
        out.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end"{weight}>'
                   f'{escape(labels[name])}</text>')
        for j, (group, color) in enumerate((("hot_path", "#4e79a7"),
                                            ("hot_path_2_threads", "#f28e2b"))):
            value = hot[name][group]
            by = y + j * (bar + 2)
            out.append(f'<rect x="{left}" y="{by}" width="{value * scale:.1f}" '
                       f'height="{bar}" fill="{color}"/>')
            out.append(f'<text x="{left + value * scale + 4:.1f}" y="{by + bar - 3}">'
                       f'{value:,.0f}</text>')
    out.append(f'<line x1="{left}" y1="52" x2="{left}" y2="{height - 25}" stroke="#333"/>')
    m = data["machine"]
    out.append(f'<text x="10" y="{height - 8}" font-size="10" fill="#555">'
               f'{escape(m["cpu"])}, {m["cores"]} cores, {escape(m["rustc"])}; '
               f'python3 scripts/performance.py</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_readme(block):
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + block + "\n" + text[end:])


SECTIONS = {
    "hot_path": hot_path,
    "pairs": pairs,
    "instructions": instructions,
    "allocations": allocations,
    "storm": storms,
    "herd": herd,
    "throughput": throughput,
    "throughput_instructions": throughput_instructions,
    "grpc_throughput": grpc_throughput,
    "grpc_instructions": grpc_instructions,
}


def main():
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    if "--skip-run" in sys.argv:
        data = json.loads(RESULTS.read_text())
    else:
        data = json.loads(RESULTS.read_text()) if only else {}
        if only:
            # The machine line stays the full run's; a partial rerun is
            # listed with the machine as it is now.
            data.setdefault("reruns", []).append({"sections": only, "machine": machine()})
        else:
            data["machine"] = machine()
        for name, measure in SECTIONS.items():
            if only is None or name in only:
                data[name] = measure()
        DOCS.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    (DOCS / "performance.svg").write_text(svg(data))
    write_readme(tables(data))
    print(f"wrote {RESULTS.relative_to(ROOT)}, docs/performance.svg and README.md",
          file=sys.stderr)


if __name__ == "__main__":
    main()
