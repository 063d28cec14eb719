"""Is a 10,000-record leaderboard fast? Render time, page size, and load, sort and filter times in headless Chromium.

Writes two synthetic results files (two machines, half the records each, with
every status, an approximate and an unranked implementation, out-of-memory
frontiers, roofline metrics and ceilings, implausible records, and an
implementation that cannot run on the device at all), renders them with
``attnbench report -o`` as a subprocess, then opens the page from the
filesystem in headless Chromium (selenium, as tests/test_browser.py does).

Load: navigation start to the ``attnbench-ready`` performance mark the page's
script sets once the case table answers clicks (a page without that mark:
the end of its load event), and DOMContentLoaded. Sort and filter: measured in
the page with ``performance.now()`` around a click on a case-table heading and
a ``change`` of a filter, with the layout they cause forced inside the timing.
Each figure is the median over the tries; PASS/FAIL against the targets.

    python benchmarks/report_speed.py [--records N] [--tries K] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnbench.results import Record, write_results

TARGETS = {"render_s": 3.0, "load_ms": 1000.0, "sort_ms": 200.0, "filter_ms": 200.0, "page_mb": 5.0}
IMPLS = [(f"impl{i}", True, True) for i in range(9)] + [("approx.lowrank", False, True), ("reference", True, False)]
NOT_ON_DEVICE = "cpu.only"
"""Every record of it unsupported with a "device ..." reason: listed in one line under the board."""
BASELINE = "impl0"
SEQS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DTYPES = ("float32", "float16", "bfloat16")
MASKS = ("none", "causal", "sliding_window")
PASSES = ("fwd", "bwd", "fwd+bwd")
HEAD_DIMS = (64, 128, 256)
HEADS = 16
MEASURED = {"tflops": {"float32": 52.0, "float16": 700.0, "bfloat16": 710.0}, "gbps": 2900.0}
PUBLISHED = {"tflops": {"float32": 67.0, "float16": 989.0, "bfloat16": 989.0}, "gbps": 3350.0}
CEILINGS = {"measured": {"tflops": {k: {"best": v, "median": 0.97 * v, "spread": 0.02} for k, v in MEASURED["tflops"].items()},
                         "gbps": {"best": MEASURED["gbps"], "median": 2850.0, "spread": 0.03}},
            "published": {"name": "H100 SXM", **PUBLISHED}}
"""As attnbench.ceilings and hardware.published_peaks write run.ceilings."""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")

LOAD_JS = """
const nav = performance.getEntriesByType('navigation')[0];
const ready = performance.getEntriesByName('attnbench-ready')[0];
return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, ready: ready ? ready.startTime : null,
        nodes: document.getElementsByTagName('*').length, svgs: document.getElementsByTagName('svg').length};
"""
SORT_JS = """
const th = Array.from(document.querySelectorAll('#case-table thead th')).find(h => h.textContent.startsWith(arguments[0]));
const t0 = performance.now();
th.click();
document.body.offsetHeight;  // the layout the new order causes counts too
return performance.now() - t0;
"""
FILTER_JS = """
const select = document.querySelector('select[data-column="' + arguments[0] + '"]');
select.value = arguments[1];
const t0 = performance.now();
select.dispatchEvent(new Event('change', {bubbles: true}));
document.body.offsetHeight;
return performance.now() - t0;
"""


def cases(count: int) -> list[dict]:
    out = []
    for head_dim, dtype, mask, pass_, seq in itertools.product(HEAD_DIMS, DTYPES, MASKS, PASSES, SEQS):
        out.append({"batch": 1, "heads_q": HEADS, "heads_kv": 4, "seq_q": seq, "seq_kv": seq, "head_dim": head_dim,
                    "dtype": dtype, "device": "cuda", "mask": mask, "window": 256 if mask == "sliding_window" else None,
                    "scale": None, "pass": pass_})
    return out[:count]


def roofline(case: dict, tflops: float) -> dict:
    """The roofline metrics the measuring side writes, from the synthetic ceilings."""
    width = 4 if case["dtype"] == "float32" else 2
    io_bytes = (2 * HEADS + 2 * case["heads_kv"]) * case["seq_kv"] * case["head_dim"] * width
    flops = 4 * case["head_dim"] * case["seq_kv"] ** 2 * HEADS
    intensity = flops / io_bytes
    peak, gbps = MEASURED["tflops"][case["dtype"]], MEASURED["gbps"]
    roof = min(peak, intensity * gbps / 1000)
    return {"arithmetic_intensity": intensity, "bound": "compute" if peak <= intensity * gbps / 1000 else "memory",
            "roofline_fraction": tflops / roof, "roofline_floor_ms": flops / (roof * 1e9),
            "pct_peak_tflops": 100 * tflops / PUBLISHED["tflops"][case["dtype"]]}


def record(rng: random.Random, impl: str, exact: bool, ranked: bool, case: dict, hardware: str) -> Record:
    seq = case["seq_kv"]
    common = {"impl": impl, "case": case, "plugin": f"plugin.{impl}", "version": "1.0", "exact": exact,
              "ranked": ranked, "hardware": hardware}
    if impl == NOT_ON_DEVICE:
        return Record(status="unsupported", reason="device cuda is not supported (cpu only)", **common)
    roll = rng.random()
    if impl != BASELINE and roll < 0.05:
        return Record(status="unsupported", reason="head_dim > 128 not supported", **common)
    if impl in ("impl1", "reference") and seq >= 8192:
        return Record(status="oom" if seq == 8192 else "skipped", reason="predicted 80 GiB > budget", **common)
    speed = 1 + int(impl[-1]) / 10 if impl[-1].isdigit() else 2.0
    median = 1e-6 * seq * seq / speed * rng.uniform(0.9, 1.1)
    samples = [median * rng.uniform(0.97, 1.03) for _ in range(2)]
    tflops = 4 * case["head_dim"] * seq * seq * HEADS / (median * 1e9)
    metrics = {
        "time_ms_median": median, "time_ms_iqr": median * rng.uniform(0.01, 0.05), "time_ms_n": 100,
        "time_ms_process_medians": samples, "process_spread": max(samples) / min(samples) - 1,
        "tflops": tflops, "gbps": 500.0, **roofline(case, tflops),
        "peak_bytes": seq * seq * (64 if impl == "impl1" else 4), "rel_err": rng.uniform(1e-4, 3e-3) * (30 if not exact else 1),
        "timing_method": "cuda-events+l2-flush",
    }
    status = "incorrect" if impl == "impl8" and roll > 0.9 else "implausible" if impl == "impl7" and roll > 0.97 else "ok"
    reason = {"ok": "", "incorrect": "rel err above the pass rule",
              "implausible": "faster than the roofline floor allows"}[status]
    return Record(status=status, reason=reason, metrics=metrics, **common)


def write_run(path: Path, hardware: str, n_cases: int, seed: int) -> None:
    rng = random.Random(seed)
    impls = [*IMPLS, (NOT_ON_DEVICE, True, True)]
    records = [record(rng, impl, exact, ranked, case, hardware) for case in cases(n_cases) for impl, exact, ranked in impls]
    run = {"id": path.parent.name, "suite": {"name": "synthetic", "path": "-", "sha256": "-"}, "device": "cuda",
           "hardware": hardware, "baseline": BASELINE, "started": f"2026-01-0{seed + 1}T00:00:00+00:00",
           "finished": None, "attnbench": "synthetic", "command": ["report_speed.py"],
           "environment": {"hostname": f"host{seed}", "torch": "2.13.0"}, "plugins": [], "options": {},
           "resumed_records": 0, "interrupted": False, "ceilings": CEILINGS}
    path.parent.mkdir(parents=True)
    write_results(path, run, records)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = [shutil.which(n) for n in ("chromium", "chromedriver")]
    if not all(found):
        sys.exit("chromium and chromedriver are needed (Debian: apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='attnbench-speed-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=options)


def measure_page(page: Path, tries: int) -> dict[str, float]:
    """Median load, DOMContentLoaded, sort and filter milliseconds over ``tries`` fresh loads."""
    driver = browser()
    found: dict[str, list[float]] = {k: [] for k in ("load_ms", "dcl_ms", "sort_ms", "filter_ms")}
    try:
        for _ in range(tries):
            driver.get(page.as_uri())
            timing = driver.execute_script(LOAD_JS)
            marked = timing["ready"] is not None
            found["load_ms"].append(timing["ready"] if marked else timing["load"])
            found["dcl_ms"].append(timing["dcl"])
            # Two sorts (ascending, then descending) and two filters (one value, then back to all).
            found["sort_ms"].append(max(driver.execute_script(SORT_JS, "time") for _ in range(2)))
            found["filter_ms"].append(max(driver.execute_script(FILTER_JS, 3, v) for v in ("bfloat16", "")))
        print(f"  DOM: {timing['nodes']} elements, {timing['svgs']} SVGs; load measured to "
              f"{'the attnbench-ready mark' if marked else 'the end of the load event (no ready mark)'}")
    finally:
        driver.quit()
    return {k: statistics.median(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="copy the page here")
    args = parser.parse_args()
    per_machine = math.ceil(args.records / 2 / (len(IMPLS) + 1))
    if per_machine > len(cases(10**9)):
        parser.error(f"at most {2 * (len(IMPLS) + 1) * len(cases(10**9))} records")
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / name / "results.json" for name in ("machine-a", "machine-b")]
        for seed, (path, gpu) in enumerate(zip(files, ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"))):
            write_run(path, gpu, per_machine, seed)
        total = 2 * per_machine * (len(IMPLS) + 1)
        out = Path(tmp) / "page"
        renders = []
        for _ in range(args.tries):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "attnbench", "report", *map(str, files), "-o", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            renders.append(time.perf_counter() - start)
        page = out / "index.html"
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(page, args.keep / "index.html")
        print(f"{total} records")
        figures = {"render_s": statistics.median(renders), "page_mb": page.stat().st_size / 1e6,
                   **measure_page(page, args.tries)}
    units = {"render_s": "s", "page_mb": "MB"}
    failed = False
    for name, value in figures.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else "PASS" if value <= target else "FAIL"
        failed |= verdict == "FAIL"
        limit = "" if target is None else f"(target <= {target:g})"
        print(f"  {name:10} {value:9.2f} {units.get(name, 'ms'):2} {limit:18} {verdict}")
    print("FAIL" if failed else "PASS", f"(median of {args.tries} tries)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
