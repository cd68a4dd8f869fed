"""Run every benchmark side by side and write results/results.json, results/results.md and the plot.

    python benchmarks/run.py            # the full run (about 12 minutes on 2 cores)
    python benchmarks/run.py --quick    # a smoke run with few rounds (about 4 minutes)
    python benchmarks/run.py --only fleet   # one benchmark again, into the existing results
    python benchmarks/run.py --only headroom headroom_cost   # spilling before the 429 and what it costs

On first use it creates ``benchmarks/.venv`` and installs what the comparison needs there
(this project with its ``redis`` extra, openai 2.x, openai-priority-loadbalancer 1.1.1, matplotlib, uvicorn);
the project's own environment is left alone. The fleet benchmark also needs ``redis-server`` on
PATH. All traffic goes to fake servers and a redis-server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
RESULTS = HERE / "results"
REQUIREMENTS = ["openai>=2,<3", "openai-priority-loadbalancer==1.1.1", "matplotlib>=3.8", "uvicorn>=0.30"]
PROJECT = f"{ROOT}[redis]"
"""This project, editable, with the extra that the fleet benchmark's shared store needs."""


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def bootstrap(argv: list[str]) -> int:
    """Create the benchmark environment if needed and re-run this script inside it."""
    python = _venv_python()
    if not python.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    marker = VENV / ".installed"
    wanted = "\n".join(REQUIREMENTS) + "\n" + PROJECT
    if not marker.exists() or marker.read_text() != wanted:
        print("installing the benchmark requirements ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", PROJECT, *REQUIREMENTS], check=True)
        marker.write_text(wanted)
    # Proxy settings would send some systems' loopback traffic through a proxy (httpx reads them; a
    # client given a transport does not): keep every system direct and on 127.0.0.1.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"OPENAI_LB_BENCH_INSIDE": "1", "NO_PROXY": "127.0.0.1,localhost"})
    return subprocess.run([str(python), str(Path(__file__).resolve()), *argv], env=env, check=False).returncode


def _machine() -> dict[str, Any]:
    import openai

    import openai_lb

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "openai": openai.__version__,
        "openai_lb": openai_lb.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def measure(quick: bool, only: list[str] | None = None, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every benchmark; or, with ``only``, those, put into the ``earlier`` results in place of theirs."""
    sys.path.insert(0, str(HERE))
    import bench_affinity as affinity
    import bench_fleet
    import bench_headroom as headroom
    import bench_health as health
    import bench_overhead as overhead
    import bench_spillover as spillover
    import bench_streaming as streaming
    from _servers import pin

    pin(0)
    systems = ["plain", "openai_lb-1", "openai_lb-3", "priority-lb"]
    command = " ".join(["python benchmarks/run.py", *(["--quick"] if quick else [])])
    results: dict[str, Any] = {"machine": _machine(), "quick": quick, "command": command}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("sdk_sequential", lambda: overhead.sdk_sequential(5 if quick else 15, 100 if quick else 300, systems)),
        ("isolated", lambda: overhead.isolated(5 if quick else 15, 2000 if quick else 20000, [3, 30, 300])),
        ("affinity", lambda: affinity.affinity(10 if quick else 100)),
        ("async_concurrency", lambda: overhead.async_concurrency(2 if quick else 6, [1, 10, 100, 1000], systems)),
        ("memory", lambda: overhead.memory(10_000 if quick else 100_000, 10, 20)),
        ("health", lambda: health.health(health.CHECKPOINTS[:-1] if quick else health.CHECKPOINTS, 5 if quick else 20)),
        ("streaming", lambda: streaming.streaming(3 if quick else 10, 8, 0.05, systems)),
    ]
    scenarios = [(spillover.TWO_TIERS, "asyncio"), (spillover.TWO_TIERS, "threads"), (spillover.THREE_TIERS, "asyncio")]
    for scenario, driver in scenarios[:1] if quick else scenarios:
        for system in ("openai_lb", "priority-lb", "round-robin"):
            steps.append(
                (f"spillover/{scenario.name}/{driver}/{system}", partial(spillover.simulate, scenario, system, driver))
            )
    steps.append(("headroom", lambda: headroom.simulate(1 if quick else 3)))
    steps.append(("headroom_cost", lambda: headroom.cost(5 if quick else 30, 1000)))
    steps.append(("fleet", lambda: bench_fleet.fleet(quick)))
    if only is not None:
        assert earlier is not None
        steps = [(name, step) for name, step in steps if name in only]
        results = earlier
    for name, step in steps:
        started = time.monotonic()
        print(f"- {name} ...", end=" ", flush=True)
        value = step()
        if name.startswith("spillover/"):
            results.setdefault("spillover", []).append(value)
        else:
            results[name] = value
        if only is not None:  # the rest of the results are older: this one says when and how it was measured
            value["measured"] = {
                "machine": _machine(),
                "command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]),
            }
        print(f"{time.monotonic() - started:.0f} s", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds: checks the benchmarks run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["affinity", "fleet", "headroom", "headroom_cost"],
        help="run only these benchmarks and put their results into the existing results.json (the rest stay as "
        "they were)",
    )
    args = parser.parse_args()
    if os.environ.get("OPENAI_LB_BENCH_INSIDE") != "1":
        return bootstrap(sys.argv[1:])
    earlier = None
    if args.only is not None:
        path = args.out / "results.json"
        if not path.exists():
            parser.error(f"--only needs the results of a full run in {path}")
        earlier = json.loads(path.read_text())
    results = measure(args.quick, args.only, earlier)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    sys.path.insert(0, str(HERE))
    import _report

    _report.plot(results, args.out / "spillover.png")
    _report.plot_fleet(results, args.out / "fleet.png")
    _report.plot_headroom(results, args.out / "headroom.png")
    (args.out / "results.md").write_text(
        # Older results name no command: only --quick told runs apart then.
        _report.markdown(
            results,
            command=results.get("command", "python benchmarks/run.py" + (" --quick" if results["quick"] else "")),
        )
    )
    print(f"wrote {args.out / 'results.md'}, results.json, spillover.png, fleet.png and headroom.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
