#!/usr/bin/env python3
"""report.py: the Markdown tables of bench/peers.sh, from its raw figures.

    report.py META TSV --machine TEXT --command TEXT [--threads ...]

META has a line per contender, `id|group|program|run by`, the first of each group being the
group's reference. TSV has a line per wrk run: `part round id shape rps requests connect read
write timeout non2xx reloads reload_ms,... cpu_ticks rss_kib processes` (part `tp` or
`reload`, shape `keep` or `close`; the last three: the CPU time the server's process tree used
during the run, its resident memory and its number of processes after it, `-` if not
measured).

Throughput: per contender and shape, the median requests/s over the rounds and their spread
(min–max), the errors wrk counted in all rounds, the median over the rounds of the ratio to
the group's reference measured in the same round (interleaved, so a slower minute of a shared
machine weighs on both), and the median CPU time the server side (supervisor and workers) used
per request; and the processes serving and their resident memory (after the keep-alive runs). Reload: per contender and shape, requests made, requests failed (wrk's
socket errors plus non-2xx answers) and reloads done, with their median time.
"""

import argparse
import statistics
import sys
from collections import defaultdict

PROGRAMS = {
    "hello.js": "hello.js (Node)",
    "app.py": "app.py (WSGI)",
    "hello": "hello (Rust)",
}
RELOAD_HOW = {
    "n-mn": "SIGHUP",
    "n-mn-rp": "SIGHUP",
    "p-mn": "SIGHUP",
    "r-mn": "SIGHUP",
    "r-mn-rp": "SIGHUP",
    "r-mn-route": "SIGHUP",
    "n-cluster-rr": "SIGHUP (cluster.js: rolling, one at a time)",
    "n-cluster-none": "SIGHUP (cluster.js: rolling, one at a time)",
    "n-pm2": "`pm2 reload`",
    "p-gunicorn": "SIGHUP",
}


def fmt(x):
    return f"{round(x):,}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("meta")
    ap.add_argument("tsv")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--clk-tck", type=int, default=100)
    for opt in ("threads", "conns", "workers", "duration", "rounds", "reload-duration",
                "reload-every"):
        ap.add_argument(f"--{opt}", required=True)
    a = ap.parse_args()

    meta = []
    for line in open(a.meta):
        if line.strip():
            cid, group, program, runby = line.rstrip("\n").split("|")
            meta.append((cid, group, program, runby))
    reference = {}
    for cid, group, _, _ in meta:
        reference.setdefault(group, cid)

    tp = defaultdict(dict)  # (id, shape) -> round -> (rps, errors, cpu µs per request)
    memory = defaultdict(list)  # id -> [(rss KiB, processes)] after each keep-alive run
    reloads = {}  # (id, shape) -> (requests, failed, breakdown, n, times)
    for line in open(a.tsv):
        f = line.rstrip("\n").split("\t")
        if len(f) < 16:
            continue
        part, rnd, cid, shape = f[0], int(f[1]), f[2], f[3]
        rps, req = float(f[4]), int(f[5])
        errs = [int(x) for x in f[6:11]]
        if part == "tp":
            cpu = int(f[13]) * 1e6 / a.clk_tck / req if f[13] != "-" and req else None
            tp[(cid, shape)][rnd] = (rps, sum(errs), cpu)
            if shape == "keep" and f[14] != "-":
                memory[cid].append((int(f[14]), int(f[15])))
        else:
            times = [int(t) for t in f[12].split(",") if t and t != "-"]
            reloads[(cid, shape)] = (req, sum(errs), errs, int(f[11]), times)

    out = []
    out.append(f"{a.machine}")
    out.append("")
    out.append("```")
    out.append(a.command)
    out.append("```")

    if tp:
        out.append("")
        out.append(
            f"Throughput: {a.workers} workers, wrk -t{a.threads} -c{a.conns}, {a.duration} s per "
            f"figure, {a.rounds} round(s) interleaved; requests/s as the median (min–max) over "
            f"the rounds; errors: wrk's socket errors and non-2xx answers in all rounds; "
            f"÷ ref: the median over the rounds of the ratio to the group's first row, "
            f"measured in the same round; CPU: the median CPU time (user + system) the server's "
            f"processes — supervisor and workers — used per request, in µs; processes, "
            f"memory: how many processes serve (supervisor, its helpers and the workers) and "
            f"their resident memory in all (median after the keep-alive runs; shared pages "
            f"count in each process)."
        )
        out.append("")
        out.append("| program | run by | keep-alive req/s | ÷ ref | CPU µs/req | errors "
                   "| new connection per request req/s | ÷ ref | CPU µs/req | errors "
                   "| processes, memory |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cid, group, program, runby in meta:
            cells = []
            for shape in ("keep", "close"):
                runs = tp.get((cid, shape))
                if not runs:
                    cells = None
                    break
                values = [r for r, _, _ in runs.values()]
                med = statistics.median(values)
                spread = f"{fmt(min(values))}–{fmt(max(values))}" if len(values) > 1 else ""
                ref = tp.get((reference[group], shape), {})
                ratios = [runs[k][0] / ref[k][0] for k in runs if k in ref and ref[k][0] > 0]
                ratio = f"{statistics.median(ratios):.2f}" if ratios else "–"
                if cid == reference[group]:
                    ratio = "1 (ref)"
                errors = sum(e for _, e, _ in runs.values())
                cpus = [c for _, _, c in runs.values() if c is not None]
                cpu = f"{statistics.median(cpus):.0f}" if cpus else "–"
                cells += [f"{fmt(med)} ({spread})" if spread else fmt(med), ratio, cpu, str(errors)]
            if cells is None:
                continue
            mem = memory.get(cid)
            if mem:
                rss = statistics.median(r for r, _ in mem) / 1024
                procs = statistics.median(p for _, p in mem)
                cells.append(f"{procs:.0f}, {rss:.0f} MiB")
            else:
                cells.append("–")
            out.append(f"| {PROGRAMS.get(program, program)} | {runby} | " + " | ".join(cells) + " |")

        if any(g != "rust" for _, g, _, _ in meta) and any(c == "r-mn-route" for c, _, _, _ in meta):
            out.append("")
            out.append(
                "Route mode (`--route`) is in the Rust group only: multinode then hands every "
                "connection to a worker over a Unix socket, and only a worker that receives "
                "them there runs under it (examples/hello does, through the SDK); hello.js and "
                "gunicorn accept on a listening socket."
            )

    if reloads:
        out.append("")
        out.append(
            f"Reload under load: wrk -t{a.threads} -c{a.conns} for {a.reload_duration} s in "
            f"each shape, a reload started {a.reload_every} s after the previous one ended; "
            f"failed: wrk's socket errors (connect/read/write/timeout) and non-2xx answers; "
            f"reloads: done during the run, each replacing every worker, and their median time. "
            f"Node's cluster module has no reload of its own: cluster.js (bench/peers/cluster.js) "
            f"does the rolling restart of its documentation on SIGHUP — fork a new worker, wait "
            f"for its `listening`, `disconnect()` the old one, `kill()` it after 2 s — one "
            f"worker at a time."
        )
        out.append("")
        out.append("| program | run by | reload | keep-alive: requests, failed | reloads (time) "
                   "| new connection per request: requests, failed | reloads (time) |")
        out.append("|---|---|---|---:|---:|---:|---:|")
        for cid, group, program, runby in meta:
            cells = []
            for shape in ("keep", "close"):
                r = reloads.get((cid, shape))
                if r is None:
                    cells = None
                    break
                req, failed, errs, n, times = r
                detail = ""
                if failed:
                    detail = " (" + "/".join(str(e) for e in errs) + ")"
                t = f" ({statistics.median(times) / 1000:.1f} s)" if times else ""
                cells += [f"{req:,}, {failed}{detail}", f"{n}{t}"]
            if cells is None:
                continue
            out.append(f"| {PROGRAMS.get(program, program)} | {runby} | {RELOAD_HOW.get(cid, '?')} | "
                       + " | ".join(cells) + " |")
        if any(r[1] for r in reloads.values()):
            out.append("")
            out.append("A failure's breakdown in parentheses: connect/read/write/timeout/non-2xx.")

    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
