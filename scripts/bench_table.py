#!/usr/bin/env python3
"""Regenerate the README's benchmark summary from the newest results in benchmarks/results/.

    scripts/bench_table.py [--results FILE] [--compile-time FILE] [--readme FILE] [--check]
                           [--print] [--svg [FILE]]

Reads a JSON file written by `benchmarks/run --json` (by default the newest one in
benchmarks/results/, by the date it records), picks a few headline workloads and writes a markdown
table — mpp, Python's multiprocessing and the best other peer, with mpp's ratios — followed by the
run's machine, date, command and commit, between the lines `<!-- bench-table:begin -->` and
`<!-- bench-table:end -->` of the readme (README.md by default). Everything else in the file is
left as it is. Below it goes the compile-time table, from the newest file written by
`benchmarks/compile_time --baseline REF --json` (its JSON says "kind": "compile_time").

--check   exit 1 (writing nothing) if the readme's table differs from the regenerated one
--print   print the table instead of writing the readme
--svg     also draw mpp's ratio to every peer on every workload, log scale
          (default benchmarks/results/ratios.svg; needs python3-matplotlib: scripts/deps.sh --plots)
"""
import argparse
import json
import os
import re
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"

# The headline rows: (workload, what the reader calls it).  Every row of every workload is in the
# JSON and in the picture; this is the short list a reader of the README compares first.
HEADLINE = [
    ("pipe.8B.rtt", "Pipe: 8-byte round trip"),
    ("pipe.1KiB.throughput", "Pipe: 1 KiB messages"),
    ("queue.8B.1p1c.throughput", "Queue: 8-byte items, 1 producer, 1 consumer"),
    ("queue.1KiB.1p1c.throughput", "Queue: 1 KiB items, 1 producer, 1 consumer"),
    ("queue.8B.2p2c.throughput", "Queue: 8-byte items, 2 producers, 2 consumers"),
    ("lock.contended.2proc", "Lock: 2 processes taking turns"),
    ("value.locked_increment.2proc", "Value: `+= 1` under its lock, 2 processes"),
    ("dict.set.1proc", "Manager dict: `d[k] = v`"),
    ("dict.get.2proc", "Manager dict: `d.get(k)`, 2 processes"),
    ("pool.map.1e6", "Pool(2).map over 10^6 items"),
    ("pool.startup", "Pool(2): start, map, join"),
    ("shm.create.1MiB", "SharedMemory: create 1 MiB"),
    ("process.start", "Process: start + join"),
]

# Peers a user could pick instead of mpp (not the hardware limits `ring`, `cacheline`, `futex`,
# `memcpy`, which benchmarks/README.md explains and the full table shows).
PEERS = {
    "boost": "Boost.Interprocess",
    "pthread": "robust pthread mutex",
    "posix_mq": "POSIX mq",
    "pipe": "pipe(2)",
    "socketpair": "socketpair",
    "posix": "raw system calls",
}
LIMITS = {"ring": "bare ring", "cacheline": "cache line", "futex": "futex", "memcpy": "memcpy"}
NAMES = {"python": "Python", **PEERS, **LIMITS}


def newest(results_dir, kind=None):
    """The results file of `kind` (None: a benchmarks/run file) with the latest recorded date (file
    name as the tie-breaker); None if there is none."""
    docs = [(f, json.loads(f.read_text())) for f in sorted(results_dir.glob("*.json"))]
    docs = [(f, d) for f, d in docs if d.get("kind") == kind]
    if not docs:
        return None
    return max(docs, key=lambda fd: (fd[1].get("date", ""), fd[0].name))[0]


def compile_table(doc, source):
    """The compile-time rows: each program's CPU time against the baseline's, and the ratio."""
    rows = {(r["program"], r["tree"]): r for r in doc["rows"]}
    titles = {"empty": "`#include <mpp/mpp.hpp>`, empty `main`",
              "small": "a small Queue + Process + Pool program"}
    base = doc.get("trees", {}).get("old", "?")
    out = ["| program (g++ -O0) | baseline | now | now / baseline | preprocessed lines (baseline, now) |",
           "|---|---:|---:|---:|---:|"]
    for program, title in titles.items():
        old, new = rows.get((program, "old")), rows.get((program, "new"))
        if not old or not new:
            continue
        out.append(f"| {title} | {old['cpu_s']:.2f} s | {new['cpu_s']:.2f} s | "
                   f"{new['cpu_s'] / old['cpu_s']:.2f}× | {old['lines']}, {new['lines']} |")
    commit = doc.get("commit", "")
    lines = [
        "",
        f"Compile time: CPU seconds of the compiler, median of {doc.get('rounds', '?')} compiles "
        f"each, interleaved; baseline: the headers of commit `{base}`.",
        "",
        f"- Compiler: {doc.get('compiler', '?')}, `{doc.get('flags', '?')}`",
        f"- Date: {doc.get('date', 'unknown')}" + (f", commit `{commit[:12]}`" if commit else ""),
        f"- Command: `{doc.get('command', 'benchmarks/compile_time')}`",
    ]
    m = doc.get("machine", {})
    if m.get("load1") is not None:
        lines.append(f"- Machine: {m.get('cpus', '?')} CPUs, load average (1 min) "
                     f"{m['load1']:.1f} at the end of the run")
    lines.append(f"- Results: [{source}]({source})")
    return "\n".join(out + lines)


def interleaved():
    """Names of the workloads measured in paired rounds (benchmarks/workloads.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from workloads import WORKLOADS
        return {w.name for w in WORKLOADS if w.interleaved}
    except ImportError:
        return set()
    finally:
        sys.path.pop(0)


def ratio(mpp, peer, paired):
    """mpp relative to peer, > 1 when mpp is better, as benchmarks/run computes it: the ratio of the
    medians, or for a workload measured in rounds the median of the rounds' ratios."""
    if paired and len(mpp["runs"]) == len(peer["runs"]):
        pairs = list(zip(mpp["runs"], peer["runs"]))
    else:
        pairs = [(mpp["median"], peer["median"])]
    if any(a == 0 or b == 0 for a, b in pairs):
        return None
    if peer["higher_is_better"]:
        return statistics.median(a / b for a, b in pairs)
    return statistics.median(b / a for a, b in pairs)


def si(v):
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= 10 * div if suffix == "k" else a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}" if a >= 1000 else f"{v:.3g}"


def times(x):
    return "—" if x is None else (f"{x:.0f}×" if x >= 100 else f"{x:.3g}×")


def value(r):
    return f"{si(r['median'])} {r['unit']}"


def index(doc):
    rows = {}
    for r in doc["results"]:
        rows.setdefault(r["workload"], {})[r["system"]] = r
    return rows


def table(doc, source):
    rows, paired = index(doc), interleaved()
    out = ["| workload | mpp | Python | mpp vs Python | best other peer | mpp vs it |",
           "|---|---:|---:|---:|---|---:|"]
    for workload, title in HEADLINE:
        systems = rows.get(workload, {})
        mpp = systems.get("mpp")
        if not mpp:
            continue
        py = systems.get("python")
        peers = [(ratio(mpp, r, workload in paired), s, r) for s, r in systems.items() if s in PEERS]
        peers = [p for p in peers if p[0] is not None]
        # The best peer is the one mpp beats by the least (or that beats mpp by the most).
        best = min(peers, key=lambda p: p[0]) if peers else None
        out.append("| " + " | ".join([
            f"{title} (`{workload}`)", value(mpp),
            value(py) if py else "—", times(ratio(mpp, py, workload in paired)) if py else "—",
            f"{PEERS[best[1]]}: {value(best[2])}" if best else "—",
            times(best[0]) if best else "—"]) + " |")
    m = doc.get("machine", {})
    machine = ", ".join(x for x in (m.get("cpu"), f"{m['cores']} cores" if m.get("cores") else "",
                                    f"Linux {m['kernel']}" if m.get("kernel") else "",
                                    f"Python {m['python']}" if m.get("python") else "") if x)
    commit = doc.get("commit", "")
    load = doc.get("loadavg")
    lines = [
        "",
        "Ratios > 1: mpp is better (more per second, or less time); medians of "
        f"{doc.get('reps', '?')} repetitions, or of paired rounds where the workload drifts with "
        "the host (benchmarks/README.md). \"Best other peer\" is the non-Python system closest to "
        "mpp on that workload; hardware limits (bare ring, cache line, futex, memcpy) and every "
        "other row are in the results file.",
        "",
        f"- Machine: {machine or 'unknown'}",
        f"- Date: {doc.get('date', 'unknown')}" + (f", commit `{commit[:12]}`" if commit else ""),
        f"- Command: `{command(doc)}`"
        + (f" ({doc['mode']} run)" if doc.get("mode") else ""),
    ]
    if load:
        lines.append(f"- Load average (1 min): {load[0]:.1f} before, {load[1]:.1f} after")
    if doc.get("note"):
        lines.append(f"- Note: {doc['note']}")
    lines.append(f"- Results: [{source}]({source}); regenerate this table with "
                 "`scripts/bench_table.py`")
    return "\n".join(out + lines)


def command(doc):
    """The run's command without its --note, which the table shows on a line of its own."""
    try:
        argv = shlex.split(doc.get("command", "benchmarks/run"))
    except ValueError:
        return doc.get("command", "benchmarks/run")
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return shlex.join(out)


def splice(text, block, path):
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        sys.exit(f"bench_table: {path} has no {BEGIN} ... {END} markers")
    return text[:begin + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def svg(doc, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        # Debian's python3-matplotlib is installed for Debian's python3, which may not be the
        # python3 first on PATH (pyenv, a venv): run again with it.
        debian = "/usr/bin/python3"
        if Path(debian).exists() and Path(sys.executable).resolve() != Path(debian).resolve():
            os.execv(debian, [debian, str(Path(__file__).resolve())] + sys.argv[1:])
        sys.exit("bench_table: --svg needs matplotlib (scripts/deps.sh --plots)")
    rows, paired = index(doc), interleaved()
    workloads = [w for w in rows if "mpp" in rows[w] and len(rows[w]) > 1]
    systems = [s for s in NAMES if any(s in rows[w] for w in workloads)]
    fig, ax = plt.subplots(figsize=(10, 0.34 * len(workloads) + 1.8))
    markers = "osD^v<>ph*"
    for k, s in enumerate(systems):
        pts = [(ratio(rows[w]["mpp"], rows[w][s], w in paired), i)
               for i, w in enumerate(workloads) if s in rows[w]]
        pts = [(x, i) for x, i in pts if x]
        if pts:
            ax.scatter([x for x, _ in pts], [i for _, i in pts], label=NAMES[s],
                       marker=markers[k % len(markers)], s=36, alpha=0.85, zorder=3)
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
    ax.set_yticks(range(len(workloads)), workloads, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_xlabel("mpp relative to the peer (> 1: mpp better; log scale)")
    m = doc.get("machine", {})
    ax.set_title(f"mpp vs. peers — {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
                 f"{doc.get('date', '?')[:10]}" + (f", {doc['mode']} run" if doc.get("mode") else ""),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="peer",
              title_fontsize=8)
    fig.tight_layout()
    plt.rcParams["svg.hashsalt"] = "mpp"  # stable ids, so an unchanged picture diffs as unchanged
    fig.savefig(path, format="svg", metadata={"Date": None})
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--results", type=Path, help="results JSON (default: newest in benchmarks/results)")
    ap.add_argument("--compile-time", type=Path, metavar="FILE",
                    help="compile-time JSON (default: newest in benchmarks/results)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the readme's table is stale")
    ap.add_argument("--print", action="store_true", help="print the table, write nothing")
    ap.add_argument("--svg", nargs="?", type=Path, const=RESULTS / "ratios.svg", metavar="FILE")
    args = ap.parse_args()
    results = args.results or newest(RESULTS)
    if results is None:
        sys.exit(f"bench_table: no results in {RESULTS} (run benchmarks/run --json ...)")
    results = results.resolve()
    doc = json.loads(results.read_text())
    readme = args.readme.resolve()
    source = Path(os.path.relpath(results, readme.parent)).as_posix()
    if args.svg:
        svg(doc, args.svg)
    block = table(doc, source)
    compile_results = args.compile_time or newest(RESULTS, "compile_time")
    if compile_results is not None:
        compile_results = compile_results.resolve()
        block += "\n\n" + compile_table(json.loads(compile_results.read_text()),
                                        Path(os.path.relpath(compile_results, readme.parent)).as_posix())
    if args.print:
        print(block)
    else:
        text = readme.read_text()
        new = splice(text, block, readme)
        if args.check:
            if new != text:
                print(f"bench_table: {readme} is not up to date with {source}", file=sys.stderr)
                return 1
        elif new != text:
            readme.write_text(new)
            print(f"updated {readme} from {source}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
