"""Run the benchmark suite and write BENCHMARKS.md (and the match-time plot).

    python bench/run.py            full suite (about an hour; 2c needs 16 GiB free): writes
                                   BENCHMARKS.md and bench/match-time.png
    python bench/run.py --quick    a ~2-minute subset: prints the tables only (pass
                                   --output PATH to write them somewhere)

Each benchmark starts its own redis-server on a free port and its own RabbitMQ virtual
host on the machine's broker (127.0.0.1:5672, guest), and removes them afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    dlib_builds,
    index_scaling,
    match_scaling,
    people_purity,
    rest_ingest,
    search_latency,
    ten_million,
    throughput,
)
from bench.common import ROOT, Section, log, machine

PLOT = ROOT / "bench" / "match-time.png"
ORDER = ("throughput", "dlib", "match", "index", "tenm", "rest", "search", "people")


def render(sections: list[Section], quick: bool, seconds: float, plot: Path | None) -> str:
    m = machine()
    cmd = "python bench/run.py" + (" --quick" if quick else "")
    out = [
        "# Benchmarks",
        "",
        f"Written by `{cmd}` (`make bench{'-quick' if quick else ''}`) on {m['date']}, in "
        f"{seconds / 60:.1f} minutes.",
        "",
        "| machine | |",
        "|---|---|",
        f"| cores | {m['cores']} |",
        f"| CPU | {m['cpu']} |",
        f"| memory | {m['memory']} |",
        f"| Python | {m['python']} |",
        f"| load average at start (1, 5, 15 min) | {m['load']} |",
        f"| commit | {m['commit']} |",
        "",
        "The machine is shared and noisy (other test runs use the same 2 cores): compare "
        "figures within one run (ratios) rather than absolute times across runs. Every "
        "benchmark uses a private redis-server and RabbitMQ virtual host; each module can "
        "be run on its own with the command under its heading.",
        "",
    ]
    for s in sections:
        out.append(s.markdown())
        if s.title.startswith("2.") and plot is not None:
            rel = os.path.relpath(plot, ROOT)
            out += [f"![match time vs stored faces]({rel})", "", f"Plot: [{rel}]({rel}).", ""]
    out += ["## Other measurements", "",
            "Kept in README.md beside the setting they decide, each with its command: the "
            "choice of `DETECT_MAX_SIDE` (`python bench/max_side.py`, section *Settings*) and "
            "what RabbitMQ holds per image inline vs with an image store "
            "(`python bench/store_message_size.py 10`, section *Image store*).", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~2-minute subset")
    parser.add_argument("--output", type=Path,
                        help="markdown file to write (default: BENCHMARKS.md, or none "
                             "with --quick)")
    parser.add_argument("--only", choices=list(ORDER), action="append",
                        help="run only these benchmarks (repeatable)")
    args = parser.parse_args()
    output = args.output or (None if args.quick else ROOT / "BENCHMARKS.md")
    chosen = args.only or list(ORDER)
    start = time.perf_counter()
    sections: list[Section] = []
    modules = {"throughput": throughput, "dlib": dlib_builds, "match": match_scaling,
               "index": index_scaling, "tenm": ten_million, "rest": rest_ingest,
               "search": search_latency, "people": people_purity}
    for name in ORDER:
        if name in chosen:
            log(f"benchmark: {name}")
            sections.append(modules[name].run(args.quick))  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    plot = None
    match = next((s for s in sections if s.title.startswith("2.")), None)
    if match is not None and output is not None:
        plot = PLOT if output == ROOT / "BENCHMARKS.md" else output.with_suffix(".png")
        match_scaling.plot_png(match.data, plot)
    text = render(sections, args.quick, seconds, plot)
    print(text)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}" + (f" and {plot}" if plot else ""))
    log(f"done in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
