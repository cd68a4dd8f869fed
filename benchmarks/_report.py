"""Turn results.json into the Markdown table and the spill-over plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bench_health


def _range(stat: dict[str, float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any], *, command: str) -> str:
    m = results["machine"]
    out = [
        "# Benchmark results\n",
        f"Produced by `{command}` on {m['date']}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
        f"openai {m['openai']}, openai_lb {m['openai_lb']}, {m['platform']}. Medians of the rounds, with "
        "min–max in brackets; every comparison was measured side by side in the same run.\n\n",
    ]
    seq = results["sdk_sequential"]
    out.append(
        f"## Per-request overhead through the SDK\n\n{seq['rounds']} rounds of {seq['calls_per_round']} sequential "
        "non-streaming calls to one loopback backend. Target for openai_lb: ratio ≤ 1.03.\n"
    )
    out.append(
        _table(
            ["system", "µs per call", "ratio to plain"],
            [
                [s, _range(seq["per_call_us"][s], "{:.0f}"), _range(seq["ratio_to_plain"][s])]
                for s in seq["per_call_us"]
            ],
        )
    )
    iso = results["isolated"]
    out.append(
        f"\n## Isolated from the network\n\nThe balancing transport over an in-memory inner transport, minus that "
        f"inner transport alone ({_range(iso['inner_us'], '{:.1f}')} µs per request), for the request the SDK "
        "builds for a chat completion (its usual 17 headers). Target: ≤ 15 µs added with 3 backends, no worse "
        "than linear growth.\n"
    )
    out.append(
        _table(
            ["case", "µs added per request"], [[case, _range(stat, "{:.1f}")] for case, stat in iso["added_us"].items()]
        )
    )
    if "affinity" in results:  # results from before the affinity benchmark have none
        out.append("\n" + affinity_markdown(results["affinity"]))
    conc = results["async_concurrency"]
    systems = list(next(iter(conc["levels"].values()))["ratio_to_plain"])
    out.append(
        "\n## Async throughput under concurrency\n\nRequests per second of N tasks sharing one client, as a "
        "ratio to plain. Target for openai_lb: ≥ 0.97 at every level.\n"
    )
    out.append(
        _table(
            ["tasks", "plain requests/s", *(s for s in systems if s != "plain"), "failed requests"],
            [
                [
                    level,
                    _range(v["requests_per_second"]["plain"], "{:.0f}"),
                    *(_range(v["ratio_to_plain"][s]) for s in systems if s != "plain"),
                    "; ".join(
                        f"{s}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
                        for s, kinds in v["failed_requests"].items()
                        if kinds
                    )
                    or "none",
                ]
                for level, v in conc["levels"].items()
            ],
        )
    )
    mem = results["memory"]
    samples = ", ".join(f"{p['calls']:,}: {p['rss_kib'] / 1024:.1f}" for p in mem["rss_kib"])
    out.append(
        f"\n## Memory\n\n{mem['calls']:,} calls through the SDK over an in-memory transport, {mem['deployments']} "
        f"deployments, a 429 every 7th answer. Resident MiB by calls made: {samples}. Growth after the first "
        f"sample: {mem['growth_after_first_sample_kib'] / 1024:.2f} MiB. Health entries: {mem['health_entries']} "
        f"(bound: backends × (deployments + 1) = {mem['health_entries_bound']}).\n"
    )
    if "health" in results:  # results from before the health benchmark have none
        out.append(
            "\n## Health store under distinct deployment names\n\nEach call names a deployment no call named "
            "before and gets a 429 (`retry-after: 1`, a fake clock moving 10 ms per call); *mixed* adds a success "
            "on a deployment that exists every 10th call, *flood* nothing. The store's memory (tracemalloc) and "
            "the median `status()` time after that many calls; `previous` is the store before ended cooldowns "
            f"were forgotten. The current store holds at most {results['health']['max_entries']:,} deployment "
            "blocks.\n"
        )
        out.append(bench_health.table(results["health"]))
    st = results["streaming"]
    out.append(
        f"\n## Streaming\n\n{st['chunks']} chunks {st['chunk_delay_s'] * 1000:.0f} ms apart, {st['rounds']} rounds. "
        "Target for openai_lb: first chunk within 2 ms of plain.\n"
    )
    out.append(
        _table(
            ["system", "first chunk ms", "first − plain ms", "last chunk ms", "last − plain ms"],
            [
                [
                    s,
                    _range(st["first_chunk_ms"][s], "{:.1f}"),
                    _range(st["first_chunk_minus_plain_ms"][s], "{:.2f}"),
                    _range(st["last_chunk_ms"][s], "{:.1f}"),
                    _range(st["last_chunk_minus_plain_ms"][s], "{:.2f}"),
                ]
                for s in st["first_chunk_ms"]
            ],
        )
    )
    out.append(
        "\n## Spill-over simulation\n\nOpen-loop load above the PTU's budget but within the total capacity; "
        "the SDK keeps its default retries. *PTU utilisation*: requests the PTU served / what its budget "
        "allowed. *Elsewhere after reset*: requests served by other backends after a PTU window reset and "
        "before the PTU served again (0 = the first request after Retry-After went to the PTU). Targets for "
        "openai_lb: 100 % success, ≥ 98 % utilisation, 0 elsewhere after reset.\n"
    )
    runs = results.get("spillover", [])
    for key in dict.fromkeys((r["scenario"], r["driver"]) for r in runs):
        chosen = [r for r in runs if (r["scenario"], r["driver"]) == key]
        first = chosen[0]
        out.append(
            f"\n### {key[0]}, {key[1]} driver: {first['rate']:g} requests/s offered, PTU capacity "
            f"{first['ptu_capacity']:g}/s, total {first['capacity']:g}/s\n\n"
        )
        out.append(
            _table(
                [
                    "system",
                    "success",
                    "PTU utilisation",
                    "elsewhere after reset (median / max)",
                    "PTU back after reset ms",
                    "upstream attempts per success",
                    "p50 ms",
                    "p99 ms",
                    "served by",
                ],
                [
                    [
                        r["system"],
                        f"{r['success_share']:.1%}",
                        f"{r['ptu_utilisation']:.1%}",
                        "{median} / {max}".format(**r["requests_elsewhere_after_reset"]),
                        _opt(r["ptu_back_after_reset_ms"]["median"]),
                        f"{r['upstream_attempts_per_success']:.2f}",
                        _opt(r["latency_ms"].get("p50")),
                        _opt(r["latency_ms"].get("p99")),
                        ", ".join(f"{k} {v}" for k, v in r["served_by"].items()),
                    ]
                    for r in chosen
                ],
            )
        )
    out.append("\n![Requests per second by backend](spillover.png)\n")
    if "headroom" in results:  # results from before the headroom benchmark have none
        out.append("\n" + headroom_markdown(results["headroom"]) + "\n![PTU 429s and utilisation](headroom.png)\n")
    if "headroom_cost" in results:
        out.append("\n" + headroom_cost_markdown(results["headroom_cost"]))
    if "fleet" in results:  # results from before the fleet benchmark have none
        out.append("\n" + fleet_markdown(results["fleet"]) + "\n![PTU 429s per window by fleet size](fleet.png)\n")
    return "".join(out)


def fleet_markdown(fleet: dict[str, Any]) -> str:
    """The fleet benchmark's section: balancing, propagation and hot-path cost."""
    paygo = " and ".join(f"{b}" for b in fleet["paygo_budgets"])
    out = [
        "## Fleet-wide balancing\n\n"
        + _measured_apart(fleet)
        + f"W worker processes, each with its own client, share a PTU with a budget of {fleet['ptu_budget']} "
        f"requests per {fleet['window']:g}-second window and two pay-as-you-go deployments ({paygo} per window); "
        f"{fleet['rate']:g} requests/s offered in all (Poisson, split evenly over the workers) for "
        f"{fleet['duration']:g} s, {fleet['rounds']} round(s) in random order. *PTU 429s per window*: the 429s the "
        "PTU answered per whole window (each worker that has not heard of the spent budget spends a request "
        "learning it). Targets: 100 % answered, ≥ 98 % utilisation, ≤ 1.5 PTU 429s per window with Redis at "
        "W = 8.\n",
    ]
    out.append(
        _table(
            ["workers", "store", "answered", "PTU utilisation", "PTU 429s per window", "p99 ms"],
            [
                [
                    str(row["workers"]),
                    row["store"],
                    _range(row["success_share"], "{:.1%}"),
                    _range(row["ptu_utilisation"], "{:.1%}"),
                    _range(row["ptu_429s_per_window"], "{:.2f}") if "ptu_429s_per_window" in row else "–",
                    _range(row["p99_ms"], "{:.0f}") if row["p99_ms"] else "–",
                ]
                for row in fleet["summary"]
            ],
        )
    )
    prop = fleet["propagation"]
    out.append(
        f"\n**Propagation** ({prop['received']} of {prop['samples']} blocks seen): one process calls "
        "`store.block(...)` on its `RedisHealthStore`, another process's store applies it from Redis (its "
        "`on_event` hook fires once its memory holds the block); the delay between the two, on the host's "
        f"monotonic clock that both share: p50 {_opt_ms(prop['p50_ms'])}, p99 {_opt_ms(prop['p99_ms'])}, max "
        f"{_opt_ms(prop['max_ms'])} (target: p99 ≤ 10 ms).\n"
    )
    hot = fleet["hot_path"]
    out.append(
        f"\n**Hot path**: the isolated transport benchmark (3 backends, PTU + spares, every answer a success; "
        f"inner transport alone {_range(hot['inner_us'], '{:.1f}')} µs), {hot['rounds']} rounds of "
        f"{hot['calls_per_round']:,} requests. Target: Redis within 1 µs of in-memory.\n"
    )
    out.append(
        _table(
            ["store", "µs added per request"],
            [[name, _range(stat, "{:.2f}")] for name, stat in hot["added_us"].items()]
            + [
                [
                    "RedisHealthStore − InMemoryHealthStore (paired by round)",
                    _range(hot["redis_minus_memory_us"], "{:.2f}"),
                ]
            ],
        )
    )
    if "best_round_us" in hot:
        best = hot["best_round_us"]
        out.append(
            f"\nFastest round, µs per request (the least disturbed by other work on the host): inner alone "
            f"{best['inner alone']:.1f}, InMemoryHealthStore {best['InMemoryHealthStore']:.1f}, RedisHealthStore "
            f"{best['RedisHealthStore']:.1f}.\n"
        )
    if "store_calls_ns" in hot:
        alone = hot["store_calls_ns"]
        out.append(
            "\nThe store's calls alone (`blocked()` on 3 backends and `count_success()`, what a success asks of "
            f"it), ns per request: InMemoryHealthStore {_range(alone['InMemoryHealthStore'], '{:.0f}')}, "
            f"RedisHealthStore {_range(alone['RedisHealthStore'], '{:.0f}')}; difference paired by round "
            f"{_range(hot['store_calls_redis_minus_memory_ns'], '{:.0f}')}.\n"
        )
    out.append(_load_average(fleet, "the fleet benchmark", "."))
    return "".join(out)


def headroom_markdown(section: dict[str, Any]) -> str:
    """The spill-before-the-429 simulation's section: reactive vs headroom, per driver."""
    capacity = section["ptu_tokens_per_minute"] / 60
    out = [
        "## Spilling before the 429\n\n"
        + _measured_apart(section)
        + f"A PTU (provisioned, {capacity:,.0f} tokens/s) at priority 1 and {section['paygos']} pay-as-you-go "
        f"deployments ({section['paygo_tokens_per_minute'] / 60:,.0f} tokens/s each, 6 requests per minute per "
        "1,000 tokens) at priority 2, fake servers answering after a simulated network round trip of "
        f"{section['latency_ms']:g} ms. Chat completions of varied sizes (a prompt of some 600 tokens at the "
        f"median, log-normal; `max_tokens` from 128 to 4,096; {section['mean_request_tokens']:,.0f} tokens charged "
        f"on average) arrive open-loop (Poisson) at {section['load']:g} × the PTU's capacity in tokens, "
        f"{section['requests_per_round']} requests per run; the SDK keeps its default retries. *reactive*: "
        "`Policy(headroom=False)`, the PTU is left when it answers 429; *headroom*: the default policy (passed "
        f"over at {section['threshold_percent']:g} % utilisation, readings held {section['horizon_s']:g} s). The "
        f"fake PTU is a leaky bucket one minute of its capacity deep, so each run starts it at "
        f"{section['prefill']:.0%} (one request charged that much, straight to it) and measures the "
        f"{section['measured_s']:g} s after {section['warmup_s']:g} s of load. {section['rounds']} rounds, the four "
        "runs of a round on the same arrivals in random order.\n\n"
        "*PTU 429s*: 429s the PTU answered in the measured window. *PTU utilisation*: tokens the PTU admitted "
        "(charged) in the window / its capacity over the window; above 100 % when its backlog grew in the window, "
        "below when it shrank, which moves it by some ±6 % in a 7 s window as headroom's level saw-tooths. "
        "*Processed*: what it drained, i.e. admitted less the backlog's growth, / capacity: 100 % unless it "
        "was idle. *PTU level*: its utilisation (`azure-openai-deployment-utilization`), mean and lowest in the "
        "window, sampled every 50 ms. *Added "
        f"ms*: a request's latency minus the {section['latency_ms']:g} ms round trip, for requests answered by a "
        "pay-as-you-go deployment (spilled) and by the PTU. Targets: 100 % answered, ≥ 80 % fewer PTU 429s "
        "with headroom, ≥ 97 % PTU utilisation in both.\n",
        _table(
            [
                "driver",
                "system",
                "answered",
                "PTU 429s",
                "fewer PTU 429s (paired)",
                "PTU utilisation",
                "processed",
                "PTU level % mean / lowest",
                "spilled added ms p50",
                "spilled p99",
                "PTU-served added ms p50",
                "PTU passed over",
            ],
            [
                [
                    row["driver"],
                    row["system"],
                    _range(row["answered_share"], "{:.1%}"),
                    _range(row["ptu_429s"], "{:.0f}"),
                    _range(row["fewer_ptu_429s_than_reactive"], "{:.0%}")
                    if row["fewer_ptu_429s_than_reactive"]
                    else "–",
                    _range(row["ptu_utilisation"], "{:.1%}"),
                    _range(row["ptu_processed"], "{:.1%}"),
                    f"{_range(row['ptu_level_mean'], '{:.1f}')} / {_range(row['ptu_level_min'], '{:.1f}')}",
                    _range(row["spilled_added_ms_p50"], "{:.1f}") if row["spilled_added_ms_p50"] else "–",
                    _range(row["spilled_added_ms_p99"], "{:.0f}") if row["spilled_added_ms_p99"] else "–",
                    _range(row["ptu_added_ms_p50"], "{:.1f}") if row["ptu_added_ms_p50"] else "–",
                    _range(row["ptu_passed_over"], "{:.0f}"),
                ]
                for row in section["summary"]
            ],
        ),
    ]
    out.append(_load_average(section, "the simulation", ": the latencies move with other work on it."))
    return "".join(out)


def headroom_cost_markdown(section: dict[str, Any]) -> str:
    """What reading headroom adds to the isolated transport, per kind of answer."""
    return (
        "## What headroom costs the isolated transport\n\n"
        + _measured_apart(section)
        + "The isolated transport benchmark (3 backends, PTU + spares, a chat completion as the SDK builds it, "
        "no `max_tokens`) with `Policy(headroom=False)` (*reactive*) and the default policy (*headroom*), over "
        "an inner transport answering from memory with no headers, with an Azure standard deployment's headers "
        "(`x-ratelimit-*` and 9 others) or a provisioned one's (its utilisation and the same 9); µs added over "
        f"that inner transport alone, {section['rounds']} rounds of {section['calls_per_round']:,} requests in "
        "random order. Target: headroom within 2 µs of reactive.\n"
        + _table(
            [
                "answers",
                "inner alone µs",
                "reactive µs added",
                "headroom µs added",
                "headroom − reactive µs (paired by round)",
                "fastest round: inner / reactive / headroom µs",
            ],
            [
                [
                    answer,
                    _range(case["inner_us"], "{:.1f}"),
                    _range(case["added_us"]["reactive"], "{:.1f}"),
                    _range(case["added_us"]["headroom"], "{:.1f}"),
                    _range(case["headroom_minus_reactive_us"], "{:.2f}"),
                    "{:.1f} / {:.1f} / {:.1f}".format(
                        case["fastest_us"]["inner alone"],
                        case["fastest_us"]["reactive"],
                        case["fastest_us"]["headroom"],
                    ),
                ]
                for answer, case in section["answers"].items()
            ],
        )
    )


def affinity_markdown(affinity: dict[str, Any]) -> str:
    """The affinity benchmark's section: what affinity adds to each kind of request."""
    out = [
        "## What stateful affinity costs\n\n"
        + _measured_apart(affinity)
        + "The isolated transport benchmark (3 backends, PTU + spares, an inner transport answering from memory) "
        "sending the request the SDK builds, with `Policy(affinity=False)` and `Policy(affinity=True)` one right "
        f"after the other in each of {affinity['rounds']} rounds. The response the pinned requests name is held, "
        "as far as the store knows, by a spare: pinned, they go there. Each create's answer names a new response, "
        f"whose holder is learned. Target: ≤ {affinity['target_us']:g} µs added on a stateless call.\n",
        _table(
            [
                "request",
                "affinity off µs",
                "affinity on µs",
                "on − off µs (paired by round)",
                "on / off",
                "fastest round, off / on µs",
            ],
            [
                [
                    name,
                    _range(case["off"], "{:.1f}"),
                    _range(case["on"], "{:.1f}"),
                    _range(case["on_minus_off"], "{:.2f}"),
                    _range(case["on_over_off"]),
                    "{off:.1f} / {on:.1f}".format(**case["fastest"]),
                ]
                for name, case in affinity["cases"].items()
            ],
        ),
        "\nA stateless request's one step that affinity changes, alone (`RequestTemplate`: the path's "
        "route, looked up), ns per request:\n",
        _table(
            ["path", "affinity off", "affinity on", "on − off (paired by round)"],
            [
                [
                    f"`{path}`",
                    _range(step["off"], "{:.0f}"),
                    _range(step["on"], "{:.0f}"),
                    _range(step["on_minus_off"], "{:.0f}"),
                ]
                for path, step in affinity["template_ns"].items()
            ],
        ),
        "\nLearning the id a create's answer names (`created_id`, which reads an answer's leading `\"id\"` "
        "without parsing it), ns: "
        + "; ".join(f"{name} {_range(stat, '{:,.0f}')}" for name, stat in affinity["created_id_ns"].items())
        + ".\n",
    ]
    return "".join(out)


def _load_average(section: dict[str, Any], what: str, end: str) -> str:
    """The host's load average as ``what`` ended, if the section recorded it (older results did not)."""
    load = section.get("load_average")
    if not load:
        return ""
    return (
        f"\nLoad average of the host as {what} ended: {load['1 min']:.1f} (1 min), {load['5 min']:.1f} (5 min), "
        f"on {load['cores']} cores{end}\n"
    )


def _measured_apart(section: dict[str, Any]) -> str:
    """For a section measured by ``run.py --only``: when and by what, since the rest of the results are older."""
    measured = section.get("measured")
    if not measured:
        return ""
    machine = measured["machine"]
    return (
        f"Measured apart from the rest by `{measured['command']}` on {machine['date']} "
        f"(openai_lb {machine['openai_lb']}, Python {machine['python']}). "
    )


def _opt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"


def _opt(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results.get("spillover", []) if r["driver"] == "asyncio"]
    if not runs:
        return
    scenario = runs[0]["scenario"]
    runs = [r for r in runs if r["scenario"] == scenario]
    bucket = 0.25
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.6 * len(runs)), sharex=True, sharey=True)
    for axis, run in zip(axes if len(runs) > 1 else [axes], runs, strict=True):
        end = max((max(ts) for ts in run["timeline"].values() if ts), default=1.0)
        edges = [i * bucket for i in range(int(end / bucket) + 2)]
        for name, times in run["timeline"].items():
            counts = [0] * (len(edges) - 1)
            for t in times:
                index = int(t / bucket)
                if 0 <= index < len(counts):
                    counts[index] += 1
            axis.step(edges[:-1], [c / bucket for c in counts], where="post", label=name)
        axis.set_title(
            f"{run['system']}: PTU utilisation {run['ptu_utilisation']:.0%}, success {run['success_share']:.0%}"
        )
        axis.set_ylabel("served / s")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper right", fontsize="small")
    (axes[-1] if len(runs) > 1 else axes).set_xlabel("seconds since the PTU's first window began")
    fig.suptitle(f"Spill-over: {scenario}, {runs[0]['rate']:g} requests/s offered (asyncio)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_fleet(results: dict[str, Any], path: Path) -> None:
    """PTU 429s per window against the fleet's size, per store; and window by window at the largest size."""
    fleet = results.get("fleet")
    if not fleet:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_window) = plt.subplots(1, 2, figsize=(11, 3.8))
    largest = max(row["workers"] for row in fleet["summary"])
    for store in dict.fromkeys(row["store"] for row in fleet["summary"]):
        rows = [r for r in fleet["summary"] if r["store"] == store and "ptu_429s_per_window" in r]
        stats = [r["ptu_429s_per_window"] for r in rows]
        by_size.errorbar(
            [r["workers"] for r in rows],
            [s["median"] for s in stats],
            yerr=[[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]],
            marker="o",
            capsize=3,
            label=store,
        )
        for run in (r for r in fleet["runs"] if r["store"] == store and r["workers"] == largest):
            series = run["ptu_429s_by_window"]
            by_window.step(range(1, len(series) + 1), series, where="mid", label=f"{store}, round {run['round'] + 1}")
    by_size.set_xlabel("worker processes (W)")
    by_size.set_ylabel("PTU 429s per window")
    by_size.set_xticks(sorted({row["workers"] for row in fleet["summary"]}))
    by_size.set_title("median over rounds (bars: min–max)")
    by_window.set_xlabel("PTU window")
    by_window.set_ylabel("PTU 429s")
    by_window.set_title(f"W = {largest}, window by window")
    for axis in (by_size, by_window):
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    fig.suptitle(
        f"Fleet sharing a PTU ({fleet['ptu_budget']} per {fleet['window']:g} s window), "
        f"{fleet['rate']:g} requests/s offered: in-memory state vs Redis"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_headroom(results: dict[str, Any], path: Path) -> None:
    """The PTU's utilisation over one round's runs, and its 429s and utilisation per run, reactive vs headroom."""
    section = results.get("headroom")
    if not section:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (timeline, errors, used) = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    colours = {"reactive": "tab:red", "headroom": "tab:blue"}
    styles = {"asyncio": "-", "threads": ":"}
    for run in (r for r in section["runs"] if "timeline" in r):
        points = run["timeline"]["utilisation"]
        timeline.plot(
            [t for t, _ in points],
            [u for _, u in points],
            styles[run["driver"]],
            color=colours[run["system"]],
            label=f"{run['system']}, {run['driver']}",
        )
    begin = section["warmup_s"]
    timeline.axvspan(begin, begin + section["measured_s"], color="grey", alpha=0.1, label="measured window")
    timeline.axhline(100, color="black", linewidth=0.8)
    timeline.axhline(section["threshold_percent"], color="tab:blue", linewidth=0.8, linestyle="--")
    timeline.set_xlim(left=0)
    timeline.set_ylim(85, 102)
    timeline.set_xlabel("seconds since the load began (round 1)")
    timeline.set_ylabel("PTU utilisation reading %")
    timeline.set_title("the PTU's level: 429 from 100 %, headroom's threshold dashed")
    timeline.legend(fontsize="small", loc="lower right")
    rows = section["summary"]
    labels = [f"{row['system']}\n{row['driver']}" for row in rows]
    for axis, key, scale, title in (
        (errors, "ptu_429s", 1.0, f"PTU 429s in the {section['measured_s']:g} s window"),
        (used, "ptu_utilisation", 100.0, "PTU utilisation % (admitted / capacity)"),
    ):
        stats = [row[key] for row in rows]
        axis.bar(
            labels,
            [s["median"] * scale for s in stats],
            yerr=[[(s["median"] - s["min"]) * scale for s in stats], [(s["max"] - s["median"]) * scale for s in stats]],
            color=[colours[row["system"]] for row in rows],
            capsize=3,
        )
        axis.set_title(title + "\nmedian over rounds, bars min–max", fontsize="medium")
        axis.tick_params(axis="x", labelsize="small")
        axis.grid(alpha=0.3, axis="y")
    used.axhline(97, color="black", linewidth=0.8, linestyle="--")
    used.set_ylim(80, 110)
    fig.suptitle(
        f"Spilling before the 429: PTU of {section['ptu_tokens_per_minute'] / 60:,.0f} tokens/s, "
        f"{section['load']:g} × its capacity offered, {section['latency_ms']:g} ms round trips"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
