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
    if "load_average" in fleet:
        load = fleet["load_average"]
        out.append(
            f"\nLoad average of the host as the fleet benchmark ended: {load['1 min']:.1f} (1 min), "
            f"{load['5 min']:.1f} (5 min), on {load['cores']} cores.\n"
        )
    return "".join(out)


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
