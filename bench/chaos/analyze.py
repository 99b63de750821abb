#!/usr/bin/env python3
"""bench/chaos.sh's arithmetic: reads what a scenario recorded and prints `key=value` lines.

analyze.py kills KILLS FAILS        kill -9 scenario: failures against kills
analyze.py phases TIMELINE A B END  requests answered per second in [0,A), [A,B), [B,END)
analyze.py events LOG T0 T1         supervisor events in [T0,T1] (epoch ms) by kind and level
analyze.py logstall LOG DIR T0 T1   log-consumer stall: lines written, shown, dropped
analyze.py record RESULTS TITLE MD  puts MD's text into RESULTS as `### TITLE` under the section
                                    `## Chaos and soak (bench/chaos.sh)`, replacing an earlier one

KILLS: `EPOCH_MS PID HELD GONE_MS` per kill (HELD: connections the victim held just before;
GONE_MS: when it had exited, its fds closed by the kernel).
FAILS: load.rs's `END_MS START_MS KIND PID FIRST` per failed request.
LOG: multinode's --log-format json output.
"""
import collections
import datetime
import glob
import json
import os
import sys

# A request counts as in flight at a kill when it ended after the kill and started before the
# victim was gone: a SIGKILLed process takes milliseconds to exit, and until its fds are closed
# it still holds what it accepted, and in route mode multinode (which learns of the death only
# when the process is gone) still hands it connections over its channel. This much slack
# covers the clocks being read by different processes.
SLACK_MS = 5


def kills(kills_path, fails_path):
    ks = []
    for l in open(kills_path):
        p = [int(x) for x in l.split()]
        if p:
            t, pid, held, gone = p
            ks.append((t, pid, held, max(gone, t) if gone else t + 1000))
    fs = []
    for l in open(fails_path):
        p = l.split()
        if p:
            fs.append((int(p[0]), int(p[1]), p[2], int(p[3]), p[4] == "1"))
    killed = {k[1] for k in ks}
    per_kill = collections.Counter()
    in_flight = 0
    other = []
    for end, start, kind, pid, _first in fs:
        # The latest kill the request was in flight at.
        hit = [k for k in ks if k[0] <= end + SLACK_MS and start - SLACK_MS <= k[3]]
        if hit and (pid == 0 or pid in killed):
            in_flight += 1
            per_kill[hit[-1][0]] += 1
        else:
            other.append((end, start, kind, pid))
    print(f"kills={len(ks)}")
    print(f"held={sum(k[2] for k in ks)}")
    print(f"victims_with_conns={sum(1 for k in ks if k[2] > 0)}")
    dying = sorted(k[3] - k[0] for k in ks)
    print(f"dying_ms_median={dying[len(dying) // 2] if dying else 0}")
    print(f"dying_ms_max={dying[-1] if dying else 0}")
    print(f"failed={len(fs)}")
    print(f"in_flight={in_flight}")
    print(f"other={len(other)}")
    print(f"kinds={','.join(f'{k}:{n}' for k, n in sorted(collections.Counter(f[2] for f in fs).items())) or '-'}")
    print(f"max_per_kill={max(per_kill.values(), default=0)}")
    print(f"kills_with_failures={len(per_kill)}")
    for end, start, kind, pid in other[:10]:
        print(f"other_example={kind} start={start} end={end} pid={pid}", file=sys.stderr)


def phases(path, a, b, end):
    per = {}
    for l in open(path):
        s, ok, failed = (int(x) for x in l.split())
        per[s] = (ok, failed)

    def rate(lo, hi):
        ok = sum(per.get(s, (0, 0))[0] for s in range(lo, hi))
        failed = sum(per.get(s, (0, 0))[1] for s in range(lo, hi))
        return ok / max(hi - lo, 1), failed

    for name, lo, hi in (("before", 0, a), ("during", a, b), ("after", b, end)):
        r, f = rate(lo, hi)
        print(f"{name}_rps={r:.0f}")
        print(f"{name}_failed={f}")
    print(f"during_min={min((per.get(s, (0, 0))[0] for s in range(a, b)), default=0)}")
    print("per_second=" + " ".join(str(per.get(s, (0, 0))[0]) for s in range(0, end)))


def epoch_ms(stamp):
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


def records(path):
    for line in open(path, errors="replace"):
        try:
            yield json.loads(line)
        except ValueError:
            continue


def events(path, t0, t1):
    by_kind = collections.Counter()
    per_sec = collections.Counter()
    for r in records(path):
        if r.get("source") != "multinode" or "time" not in r:
            continue
        t = epoch_ms(r["time"])
        if not t0 <= t <= t1:
            continue
        key = f"{r.get('level')}:{r.get('event')}"
        by_kind[key] += 1
        if r.get("level") in ("warn", "error"):
            per_sec[(key, t // 1000)] += 1
    print("events=" + (",".join(f"{k}:{n}" for k, n in sorted(by_kind.items())) or "-"))
    print(f"max_warnings_per_second={max(per_sec.values(), default=0)}")


def logstall(path, d, t0, t1):
    written = 0
    for f in glob.glob(os.path.join(d, "count.*")):
        written += int(open(f).read().split()[0])
    shown = 0
    shown_after = 0
    dropped = 0
    drop_notes = 0
    for r in records(path):
        if r.get("source") == "worker" and str(r.get("msg", "")).startswith("spew "):
            shown += 1
            if epoch_ms(r["time"]) > t1:
                shown_after += 1
        elif r.get("event") == "dropped":
            dropped += int(r.get("lines", 0))
            drop_notes += 1
    print(f"written={written}")
    print(f"shown={shown}")
    print(f"shown_after_stall={shown_after}")
    print(f"dropped_reported={dropped}")
    print(f"dropped_notes={drop_notes}")
    print(f"unaccounted={written - shown - dropped}")


SECTION = "## Chaos and soak (bench/chaos.sh)"
INTRO = """
Figures from a shared 2-core VM (other helpers' builds and tests ran meanwhile), as root, the
workers as nobody; each scenario's run held /work/bench.lock, so no other benchmark overlapped it.
Every scenario is bounded, starts its own multinode on 127.0.0.1 and kills only what it started;
`bench/chaos.sh all` runs them all, `QUICK=1 bench/chaos.sh all` a short version of each that
checks the same things and records nothing (`tests/chaos.rs` runs it). Each subsection says the
command and the commit it was measured at.
"""


def record(results, title, body_path):
    lines = open(results).read().split("\n")
    body = open(body_path).read().rstrip("\n").split("\n")
    sub = ["### " + title, ""] + body + [""]
    if SECTION not in lines:
        while lines and lines[-1] == "":
            lines.pop()
        lines += ["", SECTION] + INTRO.rstrip("\n").split("\n") + [""]
    start = lines.index(SECTION)
    # The end of the section: the next `## ` heading, or the end of the file.
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = "### " + title
    if head in lines[start:end]:
        a = lines.index(head, start, end)
        b = next((i for i in range(a + 1, end) if lines[i].startswith(("### ", "## "))), end)
        lines[a:b] = sub
    else:
        while end > start and lines[end - 1] == "":
            end -= 1
        lines[end:end] = [""] + sub
    text = "\n".join(lines).rstrip("\n") + "\n"
    open(results, "w").write(text)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "kills":
        kills(*args)
    elif cmd == "phases":
        phases(args[0], *(int(x) for x in args[1:]))
    elif cmd == "events":
        events(args[0], int(args[1]), int(args[2]))
    elif cmd == "logstall":
        logstall(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "record":
        record(*args)
    else:
        sys.exit(f"analyze.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
