"""The Markdown table of ``bench/results.json``: one row per figure, its baseline, the ratio, the goal."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str, str, str]


def _v(s: dict[str, Any], scale: float = 1.0, digits: int = 3) -> str:
    """``median (min-max)``."""
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if lo == hi:
        return f"{med:.{digits}g}"
    return f"{med:.{digits}g} ({lo:.{digits}g}-{hi:.{digits}g})"


def _ok(value: float, goal: float, higher: bool = True) -> str:
    met = value >= goal if higher else value <= goal
    return ("met" if met else "**missed**") + f" ({'≥' if higher else '≤'} {goal:g})"


def throughput_rows(f: dict[str, Any]) -> list[Row]:
    t, cpu = f["tasks_per_second"], f["cpu_ms_per_task"]
    med = {k: v["median"] for k, v in t.items()}
    rows: list[Row] = [
        ("1 throughput", f"{f['tasks']} no-op tasks/s, `default` worker x{f['concurrency']}",
         f"project {_v(t['project'])}", f"bare Celery, same settings {_v(t['bare'])}",
         f"{med['project'] / med['bare']:.2f}x", _ok(med["project"] / med["bare"], 1.0)),
        ("1 throughput", "worker CPU ms per task (main + children)", f"project {_v(cpu['project'])}",
         f"bare {_v(cpu['bare'])}", f"{cpu['bare']['median'] / cpu['project']['median']:.2f}x", "(lower is better)"),
        ("1 throughput", "the guide's settings vs Celery's defaults", f"bare, guide {_v(t['bare'])}",
         f"bare, defaults {_v(t['bare_defaults'])}", f"{med['bare'] / med['bare_defaults']:.2f}x", "(cost of safety)"),
        ("1 throughput", "+ `worker_disable_prefetch`", f"bare {_v(t['bare_no_prefetch'])}",
         f"bare {_v(t['bare'])}", f"{med['bare_no_prefetch'] / med['bare']:.2f}x", "(recovered?)"),
    ]
    lat = f["latency_ms"]
    for label, title in (("idle", f"idle ({lat['idle_rate']:.0f}/s)"), ("load", f"load {lat['load_rate']:.0f}/s")):
        p, b = lat[label]["project"], lat[label]["bare"]
        for q in ("p50", "p95", "p99"):
            rows.append(("2 latency", f"enqueue→start ms, {title}, {q}", f"project {_v(p[q])}", f"bare {_v(b[q])}",
                         f"{p[q]['median'] / b[q]['median']:.2f}x", "(lower is better)"))
    return rows


def startup_rows(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for queue, e in f["queues"].items():
        p, b = e["project"], e["bare"]
        frac = p["rss_fraction_of_limit"]["median"]
        limit_mb = e["memory_limit"] / 2**20
        rows.append(("3 memory", f"`{queue}` RSS at x{e['guide_concurrency']} (measured x{e['effective_concurrency']}) "
                     f"after {f['tasks']} tasks, MiB; limit {limit_mb:.0f} MiB",
                     f"project {_v(p['rss_at_guide_concurrency'], 2**-20)} = {100 * frac:.0f} %",
                     f"bare {_v(b['rss_at_guide_concurrency'], 2**-20)}",
                     f"{p['rss_at_guide_concurrency']['median'] / b['rss_at_guide_concurrency']['median']:.2f}x",
                     _ok(100 * frac, 30, higher=False) + " %"))
        rows.append(("3 memory", f"`{queue}` PSS (what the limit charges), MiB; torch loaded",
                     f"project {_v(p['pss'], 2**-20)}; torch: {'YES' if p['torch_loaded'] else 'no'}",
                     f"bare {_v(b['pss'], 2**-20)}", f"{p['pss']['median'] / b['pss']['median']:.2f}x",
                     "torch never: " + ("**missed**" if p["torch_loaded"] else "met")))
    for queue, e in f["queues"].items():
        p, b = e["project"]["ready_seconds"], e["bare"]["ready_seconds"]
        rows.append(("4 start-up", f"`{queue}` process start → ready file, s", f"project {_v(p)}", f"bare {_v(b)}",
                     f"{p['median'] / b['median']:.2f}x", _ok(p["median"], 1.0, higher=False) + " s"))
    return rows


def container_rows(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for queue, e in f["queues"].items():
        p, b = e["project"], e["bare"]
        rows.append(("4 start-up", f"`{queue}` `docker run` → ready file, s", f"project {_v(p)}",
                     f"bare, same image {_v(b)}", f"{p['median'] / b['median']:.2f}x",
                     _ok(p["median"], 1.0, higher=False) + " s"))
    rows.append(("4 start-up", "`docker exec … probe readiness`, s", f"{_v(f['probe_seconds'])}", "", "", ""))
    return rows


def image_rows(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    base = f["base"]["mb"]
    for name, e in f["images"].items():
        if name == "training":
            goal = _ok(e["mb"], 5800, higher=False) + " MB"
        else:
            goal = _ok(e["delta_mb"], 60, higher=False) + " MB over base"
        rows.append(("5 images", f"`{e['image']}` MB (delta over base)", f"{e['mb']:.0f} (+{e['delta_mb']:.1f})",
                     f"base {base:.0f}", f"{e['mb'] / base:.2f}x", goal))
    return rows


def scaling_rows(f: dict[str, Any]) -> list[Row]:
    d = f["drain_seconds"]
    what = f"drain {f['tasks']} x {f['sleep_seconds'] * 1000:.0f} ms tasks, s (scraping x{f['concurrency']})"
    return [("6 scaling", what,
             f"2 workers {_v(d['2 workers'])}", f"1 worker {_v(d['1 worker'])}", f"{f['speedup']:.2f}x",
             _ok(f["speedup"], 1.8))]


def training_rows(f: dict[str, Any], number: str = "7 LoRA CPU") -> list[Row]:
    p, r = f["project"], f["reference"]
    what = f"{f['size']} model, {f['resolution']} px, batch {f['batch_size']}, rank {f['rank']}, {f['dtype']}: s/step"
    rows: list[Row] = [(number, what, f"project {_v(p['seconds_per_step'])}", f"plain loop {_v(r['seconds_per_step'])}",
                        f"{f['ratio']:.2f}x", _ok(f["ratio"], 1.0))]
    if "peak_memory_gb" in p:
        rows.append((number, "peak GPU memory, GB", f"project {_v(p['peak_memory_gb'])}",
                     f"plain loop {_v(r['peak_memory_gb'])}",
                     f"{p['peak_memory_gb']['median'] / r['peak_memory_gb']['median']:.2f}x", "(lower is better)"))
    if "reference_compiled" in f:
        c = f["reference_compiled"]
        ratio = c["steps_per_second"]["median"] / r["steps_per_second"]["median"]
        rows.append((number, "plain loop + torch.compile(unet), s/step", f"{_v(c['seconds_per_step'])}",
                     f"plain loop {_v(r['seconds_per_step'])}", f"{ratio:.2f}x", "(what compile gives)"))
    return rows


BUILDERS = {"throughput": throughput_rows, "startup": startup_rows, "containers": container_rows,
            "images": image_rows, "scaling": scaling_rows, "training": training_rows}


def table(rows: list[Row]) -> str:
    head = ("figure", "what", "measured", "baseline (same run)", "ratio", "goal")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    rows: list[Row] = []
    for name, builder in BUILDERS.items():
        if name in results["figures"]:
            rows += builder(results["figures"][name])
    if "training" in results["figures"] or not results["figures"]:
        rows.append(("8 LoRA GPU", "SD-1.5-sized UNet, 512 px, bf16", "not run: no GPU here", "", "",
                     "bench/gpu.sh on a GPU machine"))
    m = results["machine"]
    header = (f"{results['date']}, {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, "
              f"celery {results['versions']['celery']}, torch {results['versions']['torch']}; "
              f"{results['sizes']['reps']} alternating repetitions, median (min-max); load average at start "
              f"{m['load_at_start'][0]}{'; QUICK (smoke) sizes' if results['quick'] else ''}")
    return header + "\n\n" + table(rows) + "\n"
