#!/usr/bin/env python3
"""How much of each CPU's idle time had a runnable thread waiting elsewhere.

Reads the output of `perf sched timehist --state` (a file, or standard
input) and prints, per CPU, its idle time and the part of it during which
a thread that had been preempted (state R when it was switched out) was
still waiting to run on another CPU: time the kernel left a core idle
while work queued on the other. By thread name, where that waiting was.

    perf sched record -o sched.data ./target/dist/veil load -k 8 -m 25
    perf sched timehist -i sched.data --state > timehist.txt
    python3 bench/scripts/sched-idle.py timehist.txt

A CPU's busy time is taken from the rows of the threads that ran on it
(each row: the thread ran for `run time` up to `time`), so CPUs whose idle
task has no rows are covered too.
"""

import re
import sys
from collections import defaultdict

ROW = re.compile(
    r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s*$"
)


def union(intervals):
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def overlap(a, b):
    """Total overlap of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def main():
    source = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    rows = []
    for line in source:
        m = ROW.match(line)
        if not m or "<idle>" in m.group(3):
            continue
        end = float(m.group(1)) * 1000.0
        run = float(m.group(6))
        rows.append((end - run, end, int(m.group(2)), m.group(3), m.group(7)))
    if not rows:
        sys.exit("no rows: pass the output of `perf sched timehist --state`")
    first = min(r[0] for r in rows)
    last = max(r[1] for r in rows)
    cpus = sorted({r[2] for r in rows})
    busy = {c: union([[s, e] for s, e, cpu, _, _ in rows if cpu == c]) for c in cpus}
    idle = {}
    for c in cpus:
        gaps, cursor = [], first
        for s, e in busy[c]:
            if s > cursor:
                gaps.append([cursor, s])
            cursor = max(cursor, e)
        if last > cursor:
            gaps.append([cursor, last])
        idle[c] = gaps
    # A thread switched out in state R waits until it next runs.
    by_thread = defaultdict(list)
    for s, e, cpu, task, state in rows:
        by_thread[task].append((s, e, cpu, state))
    waits = defaultdict(list)  # cpu -> [(start, end, name)]
    for task, runs in by_thread.items():
        runs.sort()
        name = re.sub(r"\[.*", "", task)
        for (s, e, cpu, state), (s2, _, _, _) in zip(runs, runs[1:]):
            if state == "R" and s2 > e:
                waits[cpu].append((e, s2, name))
    span = last - first
    print(f"window {span:.1f} ms, CPUs {cpus}")
    for c in cpus:
        others = [w for cpu, ws in waits.items() if cpu != c for w in ws]
        waiting = union([[s, e] for s, e, _ in others])
        idle_ms = sum(e - s for s, e in idle[c])
        stranded = overlap(idle[c], waiting)
        names = defaultdict(float)
        for s, e, name in others:
            names[name] += overlap(idle[c], [[s, e]])
        top = ", ".join(
            f"{n} {ms:.0f} ms" for n, ms in sorted(names.items(), key=lambda x: -x[1])[:4]
        )
        print(
            f"CPU {c}: idle {idle_ms:.1f} ms ({100 * idle_ms / span:.1f}%), "
            f"of which {stranded:.1f} ms with a runnable thread waiting on another CPU ({top})"
        )


if __name__ == "__main__":
    main()
