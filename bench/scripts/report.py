#!/usr/bin/env python3
"""Turns the benchmark results (JSON lines written by `cargo bench -p redcloud-bench`) into the
markdown results table of bench/README.md, between the `<!-- results:begin -->` and
`<!-- results:end -->` markers.

usage: bench/scripts/report.py [RESULTS.jsonl] [--readme bench/README.md] [--print]

RESULTS defaults to $REDCLOUD_BENCH_OUT, else $CARGO_TARGET_DIR/redcloud-bench/results.jsonl,
else target/redcloud-bench/results.jsonl. Later lines win over earlier ones for the same
(bench, case, metric), so re-running one benchmark updates its rows.
"""

import datetime
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def default_results():
    if os.environ.get("REDCLOUD_BENCH_OUT"):
        return pathlib.Path(os.environ["REDCLOUD_BENCH_OUT"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(HERE.parent.parent / "target")
    return pathlib.Path(target) / "redcloud-bench" / "results.jsonl"


def fmt(value):
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render(lines):
    runs = []
    rows = {}
    order = []
    for line in lines:
        rec = json.loads(line)
        if "run" in rec:
            runs.append(rec["run"])
            continue
        key = (rec["bench"], rec["case"], rec["metric"])
        if key not in rows:
            order.append(key)
        rows[key] = rec
    out = []
    for i, run in enumerate(runs or [{}]):
        when = datetime.datetime.fromtimestamp(run.get("unix_time", 0), datetime.timezone.utc)
        commit = run.get("commit", "?") + (" (with uncommitted changes)" if run.get("dirty") else "")
        what = "Run" if i == 0 else "Then re-ran " + ", ".join(run.get("selected", [])) + ","
        out.append(
            f"{what} {when:%Y-%m-%d %H:%M} UTC, commit `{commit}`, profile {run.get('profile', '?')}"
            + (f", {run['build']} build" if run.get("build") else "")
            + ", "
            f"{run.get('cpus', '?')} CPUs; later runs replace the figures they cover."
        )
    out += [
        "",
        "| benchmark | case | figure | value | target | |",
        "|---|---|---|---:|---|---|",
    ]
    met, missed = [], []
    for key in order:
        r = rows[key]
        if r["metric"] == "bench wall time" or r["bench"] == "all":
            continue
        verdict = {True: "met", False: "**missed**", None: ""}[r.get("met")]
        value = f"{fmt(r['value'])} {r['unit']}".strip()
        note = f" ({r['note']})" if r.get("note") else ""
        out.append(
            f"| {r['bench']} | {r['case']} | {r['metric']}{note} | {value} | "
            f"{r.get('target') or ''} | {verdict} |"
        )
        if r.get("met") is True:
            met.append(r)
        elif r.get("met") is False:
            missed.append(r)
    walls = [rows[k] for k in order if k[2] in ("bench wall time", "total wall time")]
    if walls:
        out += ["", "Wall time: " + ", ".join(f"{r['bench']} {r['value']:.0f} s" for r in walls) + "."]
    out += ["", f"Targets met: {len(met)}; missed: {len(missed)}."]
    return "\n".join(out)


def main(argv):
    args = [
        a
        for i, a in enumerate(argv)
        if not a.startswith("--") and (i == 0 or argv[i - 1] != "--readme")
    ]
    results = pathlib.Path(args[0]) if args else default_results()
    readme = HERE.parent / "README.md"
    if "--readme" in argv:
        readme = pathlib.Path(argv[argv.index("--readme") + 1])
    table = render(results.read_text().splitlines())
    if "--print" in argv:
        print(table)
        return
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(f"updated {readme} from {results}")


if __name__ == "__main__":
    main(sys.argv[1:])
