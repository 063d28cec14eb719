"""The leaderboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

The page comes from a real smoke run merged with a synthetic second machine. It
is opened from the filesystem (file://) and checked for rendered tables and
charts, working sort and filters, no console errors and no network request. A
screenshot is kept under reports/test-artifacts/ (git-ignored). The smoke page's
size limit is checked here too, on the same run, without a browser.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from synthetic_results import CEILINGS, case, record, task_record, write_run

from attnbench.report import html as page_html
from attnbench.report.html import PAGE_NAME
from attnbench.report.pagedata import PAGE_ROWS

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
SMOKE_PAGE_LIMIT = 2 * 1000 * 1000
"""The smoke suite's page must stay under 2 MB."""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000")
NETWORK_SCHEMES = ("http:", "https:", "ws:", "wss:", "ftp:")
SECOND_MACHINE = "Synthetic GPU B"

pytestmark = pytest.mark.slow  # every test here needs the smoke run


def find_chromium() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A real run of suites/smoke.yaml (about a minute on two cores)."""
    out = tmp_path_factory.mktemp("smoke")
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", str(ROOT / "suites" / "smoke.yaml"),
                           "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return out


def test_smoke_page_stays_under_two_megabytes(smoke_run):
    size = (smoke_run / PAGE_NAME).stat().st_size
    assert 0 < size <= SMOKE_PAGE_LIMIT, f"smoke index.html is {size} bytes"


@pytest.fixture(scope="module")
def page(smoke_run, tmp_path_factory):
    """The smoke run and a synthetic second machine (with incorrect and out-of-memory records) on one page."""
    tmp = tmp_path_factory.mktemp("page")
    cases = [case(seq) for seq in (128, 256, 512)]
    records = [record("sdpa", c, 1.0) for c in cases] + [record("eager", c, 2.0) for c in cases[:2]]
    records += [record("eager", cases[2], status="oom", reason="CUDA out of memory"),
                record("flex", cases[0], 0.5, status="incorrect", reason="rel err 0.4")]
    other = write_run(tmp / "other", records, hardware=SECOND_MACHINE, baseline="sdpa")
    done = subprocess.run([sys.executable, "-m", "attnbench", "report", str(smoke_run), str(other), "-o", str(tmp / "page")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    smoke_records = len(json.loads((smoke_run / "results.json").read_text())["records"])
    return tmp / "page" / PAGE_NAME, smoke_records + len(records), len(records)


@pytest.fixture(scope="module")
def browser():
    found = find_chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def opened(browser, page):
    """The page freshly loaded (sort and filter state reset), its record count, and the second machine's."""
    path, total, other = page
    browser.get_log("performance")  # drop what earlier tests left
    browser.get(path.as_uri())
    yield browser, total, other
    assert_offline_and_quiet(browser)


def assert_offline_and_quiet(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "the performance log saw no request at all, not even the page's own"
    assert not [u for u in urls if u.startswith(NETWORK_SCHEMES)], f"network requests: {urls}"


def visible_rows(driver) -> list[list[str]]:
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#case-table tbody tr'))
            .filter(r => !r.hidden).map(r => Array.from(r.cells).map(c => c.textContent));""")


def column_values(driver, name: str) -> list[float | None]:
    return driver.execute_script("""
        const i = Array.from(document.querySelectorAll('#case-table thead th')).findIndex(th => th.textContent === arguments[0]);
        return Array.from(document.querySelectorAll('#case-table tbody tr')).filter(r => !r.hidden)
            .map(r => r.cells[i].hasAttribute('data-v') ? parseFloat(r.cells[i].getAttribute('data-v')) : null);""", name)


def header(driver, name: str):
    from selenium.webdriver.common.by import By

    return next(th for th in driver.find_elements(By.CSS_SELECTOR, "#case-table thead th") if th.text == name)


def test_tables_and_charts_render(opened):
    from selenium.webdriver.common.by import By

    driver, total, _ = opened
    boards = driver.find_elements(By.CSS_SELECTOR, "section.leaderboard")
    assert len(boards) == 2 and any(SECOND_MACHINE in b.text for b in boards)
    assert all(b.find_element(By.CSS_SELECTOR, "table.board tbody tr").is_displayed() for b in boards)
    assert len(visible_rows(driver)) == total
    assert driver.find_element(By.ID, "case-count").text == f"{total} of {total} records"
    charts = [c for c in driver.find_elements(By.CSS_SELECTOR, "svg.chart") if c.is_displayed()]
    assert charts and all(c.size["width"] > 100 and c.size["height"] > 100 for c in charts)
    points = driver.execute_script("return Array.from(document.querySelectorAll('svg.chart circle')).filter(c => c.querySelector('title')).length")
    assert points > 0, "chart points carry no <title> tooltip"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height, 12000))
    shot = ARTIFACTS / "leaderboard.png"
    assert driver.save_screenshot(str(shot))
    driver.set_window_size(1400, 1000)
    print(f"screenshot: {shot}")


def test_sorting_by_a_numeric_column_puts_empty_cells_last(opened):
    driver, _, _ = opened
    header(driver, "time ± noise").click()
    values = column_values(driver, "time ± noise")
    numbers = [v for v in values if v is not None]
    assert numbers == sorted(numbers) and values[: len(numbers)] == numbers
    header(driver, "time ± noise").click()
    values = column_values(driver, "time ± noise")
    numbers = [v for v in values if v is not None]
    assert numbers == sorted(numbers, reverse=True) and values[: len(numbers)] == numbers
    header(driver, "implementation").click()
    impls = [row[6] for row in visible_rows(driver)]
    assert impls == sorted(impls, key=str.lower)


def test_filters_keep_only_matching_rows(opened):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver, total, other = opened

    def select(column: int, value: str) -> None:
        Select(driver.find_element(By.CSS_SELECTOR, f'select[data-column="{column}"]')).select_by_visible_text(value)

    select(3, "bfloat16")
    rows = visible_rows(driver)
    assert 0 < len(rows) < total and all(r[3] == "bfloat16" for r in rows)
    assert driver.find_element(By.ID, "case-count").text == f"{len(rows)} of {total} records"
    select(3, "all")
    select(0, SECOND_MACHINE)
    rows = visible_rows(driver)
    assert len(rows) == other and all(r[0] == SECOND_MACHINE for r in rows)
    select(7, "oom")
    rows = visible_rows(driver)
    assert len(rows) == 1 and "CUDA out of memory" in rows[0][-1]
    select(7, "all")
    select(0, "all")
    count = driver.find_element(By.ID, "case-count")
    driver.find_element(By.ID, "case-search").send_keys("sdpa.flash")
    # The text filter applies once typing pauses.
    WebDriverWait(driver, 10).until(lambda _: count.text != f"{total} of {total} records")
    rows = visible_rows(driver)
    assert rows and all(r[6] == "sdpa.flash" for r in rows)


def test_quality_chart_renders(browser, tmp_path):
    """A quality section (exact, approximate, incorrect and unsupported records): its chart draws, quietly."""
    from selenium.webdriver.common.by import By

    records = [task_record("eager", [0.90, 0.92, 0.94], step_ms=20.0), task_record("sdpa", [0.90, 0.92, 0.94], 10.0),
               task_record("broken", [0.50, 0.52, 0.51], 5.0, status="incorrect", agrees=False),
               task_record("linear", [0.80, 0.83, 0.86], 4.0, exact=False, agrees=False),
               task_record("int8", None, status="unsupported", exact=False, reason="backward not supported")]
    path = write_run(tmp_path / "quality", records)
    done = subprocess.run([sys.executable, "-m", "attnbench", "report", str(path), "-o", str(tmp_path / "page")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    browser.get_log("performance")
    browser.get((tmp_path / "page" / PAGE_NAME).as_uri())
    [chart] = browser.find_elements(By.CSS_SELECTOR, "#quality svg.chart")
    assert chart.is_displayed() and chart.size["width"] > 100 and chart.size["height"] > 100
    rows = browser.find_elements(By.CSS_SELECTOR, "#quality table.quality tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.impl").text for r in rows] == ["eager", "sdpa", "linear", "broken", "int8"]
    # Every plotted point carries its tooltip; the front's staircase and rings have a size on screen.
    tips = browser.execute_script("""
        return Array.from(document.querySelectorAll('#quality svg.chart title')).map(t => t.textContent);""")
    assert sum(tip.startswith(("eager (", "sdpa (", "broken (", "linear (")) for tip in tips) == 4
    front = browser.find_element(By.CSS_SELECTOR, "#quality svg.chart polyline.front")
    assert front.size["width"] > 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#quality svg.chart circle.ring")) == 3  # sdpa, linear, legend
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("document.getElementById('quality').scrollIntoView()")
    assert browser.save_screenshot(str(ARTIFACTS / "quality.png"))
    assert_offline_and_quiet(browser)


BIG_CASES = [case(seq, dtype=d, mask=m, pass_=p) | {"batch": b} for b in (1, 2, 3) for seq in (64, 128, 256)
             for d in ("float32", "bfloat16") for m in ("none", "causal") for p in ("fwd", "bwd")]
OFF_DEVICE = "gpu.only"


@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    """A board of 360 records with roofline metrics and ceilings: the case table pages, the family charts past a
    small budget are carried gzipped, one implementation has implausible records, one cannot run on the device."""
    tmp = tmp_path_factory.mktemp("big")
    records = []
    for i, c in enumerate(BIG_CASES):
        intensity = 4.0 * c["seq_kv"]
        records += [record("base", c, 1.0 + i / 100, intensity=intensity, noise=0.01),
                    record("fast", c, 0.5 + i / 100, intensity=intensity, noise=0.01),
                    record("cheat", c, 0.001, status="implausible", reason="below the floor", intensity=intensity)
                    if i % 9 == 0 else record("cheat", c, 0.9 + i / 100, intensity=intensity, noise=0.01),
                    record(OFF_DEVICE, c, status="unsupported", reason="device cpu not supported (declares cuda)")]
    path = write_run(tmp / "big", records, ceilings=CEILINGS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(page_html, "INLINE_CHART_BYTES", 20_000)
        page = page_html.write_report([path], tmp / "page")
    return page, records


def test_the_board_shows_fast_p_and_the_roofline(browser, big_page):
    from selenium.webdriver.common.by import By

    page, records = big_page
    implausible = sum(r.status == "implausible" for r in records)
    browser.get_log("performance")
    browser.get(page.as_uri())
    [board] = browser.find_elements(By.CSS_SELECTOR, "section.leaderboard")
    fastp = board.find_element(By.CSS_SELECTOR, 'svg[aria-label="fast_p: right and more than p× faster"]')
    roofline = board.find_element(By.CSS_SELECTOR, 'svg[aria-label="Roofline"]')
    for chart in (fastp, roofline):
        assert chart.is_displayed() and chart.size["width"] > 300 and chart.size["height"] > 200
    stairs = fastp.find_elements(By.CSS_SELECTOR, "polyline.step")
    assert len(stairs) == 3 and all(s.size["width"] > 100 for s in stairs)  # base, fast, cheat
    roofs = roofline.find_elements(By.CSS_SELECTOR, "polyline.roof")
    assert len(roofs) == 4 and all(r.size["width"] > 100 for r in roofs)  # float32 and bfloat16, measured and published
    assert len(roofline.find_elements(By.CSS_SELECTOR, "polyline.roof.published")) == 2
    tips = browser.execute_script("""return Array.from(arguments[0].querySelectorAll('title'))
        .map(t => t.textContent).filter(t => t.includes(' FLOP/B'));""", roofline)
    assert tips and any("implausible" in t for t in tips) and any("of the roof" in t for t in tips)
    # Implausible records are marked, and the implementation that cannot run here is one line, not a row.
    assert f"+{implausible} implausible" in board.find_element(By.CSS_SELECTOR, "table.board").text
    assert board.find_element(By.CSS_SELECTOR, "p.off-device").text.startswith(f"Cannot run on cpu at all: {OFF_DEVICE}")
    assert OFF_DEVICE not in [td.text for td in board.find_elements(By.CSS_SELECTOR, "table.board td.impl")]
    # The rules come after the boards, folded.
    rules = browser.find_element(By.ID, "rules")
    assert rules.tag_name == "details" and rules.get_attribute("open") is None
    assert browser.execute_script("return arguments[0].compareDocumentPosition(arguments[1]) & 4", board, rules)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView()", fastp)
    assert browser.save_screenshot(str(ARTIFACTS / "board-charts.png"))
    assert_offline_and_quiet(browser)


def test_a_large_case_table_pages_sorts_and_filters_its_data(browser, big_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    page, records = big_page
    total = len(records)
    browser.get_log("performance")
    browser.get(page.as_uri())
    assert browser.execute_script("return performance.getEntriesByName('attnbench-ready').length") == 1
    count, pager = browser.find_element(By.ID, "case-count"), browser.find_element(By.ID, "case-page")
    assert count.text == f"{total} of {total} records" and len(visible_rows(browser)) == PAGE_ROWS
    assert pager.text == f"rows 1–{PAGE_ROWS} of {total}"
    [previous, following] = browser.find_elements(By.CSS_SELECTOR, "#case-pager button")
    following.click()
    assert len(visible_rows(browser)) == total - PAGE_ROWS and pager.text == f"rows {PAGE_ROWS + 1}–{total} of {total}"
    assert not following.is_enabled() and previous.is_enabled()
    # Sorting orders all the data, not the page: the first row is the fastest of every record, the untimed last.
    header(browser, "time ± noise").click()
    times = sorted(r.metrics["time_ms_median"] for r in records if r.metrics)
    assert pager.text == f"rows 1–{PAGE_ROWS} of {total}"
    assert column_values(browser, "time ± noise")[:3] == pytest.approx(times[:3])
    following.click()
    values = column_values(browser, "time ± noise")
    assert values[-1] is None and [v for v in values if v is not None] == pytest.approx(times[PAGE_ROWS:])
    header(browser, "time ± noise").click()
    assert column_values(browser, "time ± noise")[0] == pytest.approx(times[-1])
    # Filters keep the sort, and the count and pages follow them.
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-column="6"]')).select_by_visible_text("fast")
    rows = visible_rows(browser)
    assert count.text == f"{len(BIG_CASES)} of {total} records" and all(r[6] == "fast" for r in rows)
    assert column_values(browser, "time ± noise") == sorted(column_values(browser, "time ± noise"), reverse=True)
    assert not browser.find_element(By.ID, "case-pager").is_displayed() or pager.text.endswith(f"of {len(BIG_CASES)}")
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-column="7"]')).select_by_visible_text("implausible")
    assert visible_rows(browser) == [] and pager.text == "no rows"
    Select(browser.find_element(By.CSS_SELECTOR, 'select[data-column="6"]')).select_by_visible_text("cheat")
    rows = visible_rows(browser)
    implausible = sum(r.status == "implausible" for r in records)
    assert len(rows) == implausible and all(r[7] == "implausible" and r[9] == "not scored" for r in rows)
    browser.find_element(By.ID, "case-search").send_keys("N256")
    WebDriverWait(browser, 10).until(lambda _: count.text != f"{implausible} of {total} records")
    assert all("N256" in r[1] for r in visible_rows(browser))
    assert_offline_and_quiet(browser)


def test_family_charts_carried_compressed_draw_when_opened(browser, big_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page, _ = big_page
    browser.get_log("performance")
    browser.get(page.as_uri())
    lazy = browser.find_elements(By.CSS_SELECTOR, "details.family[data-lazy]")
    assert lazy and not lazy[0].find_elements(By.CSS_SELECTOR, "svg")
    drawn = browser.find_element(By.CSS_SELECTOR, "details.family[open]")
    assert len(drawn.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    lazy[-1].find_element(By.TAG_NAME, "summary").click()
    WebDriverWait(browser, 10).until(lambda _: len(lazy[-1].find_elements(By.CSS_SELECTOR, "svg.chart")) == 3)
    charts = lazy[-1].find_elements(By.CSS_SELECTOR, "svg.chart")
    assert all(c.is_displayed() and c.size["width"] > 300 for c in charts)
    assert lazy[-1].get_attribute("data-lazy") is None
    assert_offline_and_quiet(browser)
