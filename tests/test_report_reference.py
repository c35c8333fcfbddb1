"""cmbunet_report -ref: detections marked TP/FP, missed reference CMBs shown, cases sorted worst first, and
the numbers on the page equal to cmbunet_evaluate's.

The page is checked with Python's HTML parser (always), and in a real headless browser where one is
installed (Chromium, ChromeDriver and the selenium package; skipped otherwise)."""

from __future__ import annotations

import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from test_report import _cmb_csv, _geometry, _phantom

from cmbunet.evaluation.cli import main as evaluate_main
from cmbunet.imageio import SimpleITKIO
from cmbunet.report.cli import main
from cmbunet.report.panels import OUTCOME_COLORS, REFERENCE_COLOR

MAX_PER_SHEET = 2
#: case -> (predicted CMB centres or None for no prediction file, reference CMB centres or None for none)
CASES = {
    "caseA": ([(14, 14, 4), (30, 24, 7), (24, 30, 10)], [(14, 14, 4), (31, 24, 7), (36, 34, 5)]),  # TP 2, FP 1, FN 1
    "caseB": ([], []),  # nothing anywhere: F1 undefined
    "caseC": ([(20, 20, 6)], []),  # a false positive in a case without CMBs
    "caseE": (None, [(14, 30, 3), (30, 14, 8), (34, 30, 10)]),  # no prediction: three misses, two pages
    "caseP": ([(24, 22, 7)], [(24, 22, 7)]),  # perfect
    "caseN": ([(20, 20, 6)], None),  # no reference: not scored
}
#: expected order, worst first: F1 0 (caseC counts as 0: FP without reference CMBs), then by errors
WORST_FIRST = ["caseE", "caseC", "caseA", "caseB", "caseP", "caseN"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report_ref")
    pred, img, ref = root / "pred", root / "images", root / "labelsTr"
    for folder in (pred, img, ref):
        folder.mkdir()
    geo = _geometry()
    for n, (case, (predicted, reference)) in enumerate(CASES.items()):
        image, _ = _phantom(reference or [], seed=n)
        SimpleITKIO.write(image, img / f"{case}_0000.nii.gz", geo)
        if predicted is not None:
            _, mask = _phantom(predicted)
            SimpleITKIO.write(mask, pred / f"{case}.nii.gz", geo)
            _cmb_csv(mask, geo, pred / f"{case}_cmbs.csv")
        if reference is not None:
            _, labels = _phantom(reference)
            SimpleITKIO.write(labels, ref / f"{case}.nii.gz", geo)
    out, evaluation = root / "report", root / "evaluation"
    code = main(["-i", str(pred), "-img", str(img), "-ref", str(ref), "-o", str(out),
                 "--max-cmbs-per-sheet", str(MAX_PER_SHEET)])
    assert evaluate_main(["-ref", str(ref), "-pred", str(pred), "-o", str(evaluation)]) == 0
    return {"code": code, "out": out, "html": (out / "index.html").read_text(),
            "per_case": pd.read_csv(evaluation / "metrics_per_case.csv", dtype={"case": str}).set_index("case"),
            "summary": json.loads((evaluation / "summary.json").read_text())}


class _Page(HTMLParser):
    """The parts of index.html the tests read: case rows (attributes and cell texts by class), links, the
    legend entries and the evaluation table."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.order: list[str] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, class, url)
        self.legend: list[str] = []
        self.evaluation: dict[str, str] = {}
        self._row = self._cell = None
        self._in_legend = self._in_li = self._in_eval = False
        self._th = ""
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and (a.get("id") or "").startswith("case-"):
            case = a["id"][len("case-"):]
            self._row = self.rows[case] = {"attrs": a, "cells": {}, "sheets": [], "missed": []}
            self.order.append(case)
        elif tag == "td" and self._row is not None:
            self._cell, self._text = (a.get("class") or "").split(), []
        elif tag in ("a", "img"):
            url = a.get("href") or a.get("src")
            self.links.append((tag, a.get("class") or "", url))
            if tag == "a" and self._row is not None and a.get("class") in ("sheet", "missed-sheet"):
                self._row["sheets" if a["class"] == "sheet" else "missed"].append(url)
        elif tag == "div" and a.get("id") == "legend":
            self._in_legend = True
        elif tag == "li" and self._in_legend:
            self._in_li, self._text = True, []
        elif tag == "table" and a.get("class") == "evaluation":
            self._in_eval = True
        elif tag in ("th", "td") and self._in_eval:
            self._text = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            for c in self._cell:
                self._row["cells"][c] = "".join(self._text).strip()
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._row = None
        elif tag == "li" and self._in_li:
            self.legend.append("".join(self._text).strip())
            self._in_li = False
        elif tag == "div" and self._in_legend:
            self._in_legend = False
        elif tag == "th" and self._in_eval:
            self._th = "".join(self._text).strip()
        elif tag == "td" and self._in_eval:
            self.evaluation[self._th] = "".join(self._text).strip()
        elif tag == "table":
            self._in_eval = False

    def handle_data(self, data):
        self._text.append(data)


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def test_page_numbers_equal_cmbunet_evaluate(compared):
    assert compared["code"] == 0
    page, per_case = _page(compared["html"]), compared["per_case"]
    assert set(page.rows) == set(CASES)
    assert set(per_case.index) == {c for c, (_, r) in CASES.items() if r is not None}
    for case, row in per_case.iterrows():
        attrs, cells = page.rows[case]["attrs"], page.rows[case]["cells"]
        for key in ("tp", "fp", "fn", "n_ref"):
            name = key.replace("_", "-")
            assert int(attrs[f"data-{name}"]) == int(row[key]) and cells[name] == str(int(row[key])), (case, key)
        f1 = float(attrs["data-f1"]) if attrs["data-f1"] else math.nan
        assert _same(f1, float(row["f1"])), case
        assert cells["f1"] == ("–" if math.isnan(row["f1"]) else f"{row['f1']:.3f}"), case
    assert (per_case.loc["caseA", ["tp", "fp", "fn"]].tolist()) == [2, 1, 1]  # the fixture does what it says
    assert page.rows["caseN"]["attrs"]["data-tp"] == "" and page.rows["caseN"]["cells"]["f1"] == "–"
    aggregate = compared["summary"]["aggregate"]
    assert page.evaluation["F1 (pooled over all CMBs)"] == f"{aggregate['f1_pooled']:.3f}"
    assert page.evaluation["false negatives"] == str(aggregate["fn"])
    assert f'id="total-missed">{aggregate["fn"]}<' in compared["html"]


def test_cases_are_sorted_worst_first(compared):
    assert _page(compared["html"]).order == WORST_FIRST


def test_links_images_legend_and_problems(compared):
    page, out = _page(compared["html"]), compared["out"]
    assert page.links and all(url and (out / unquote(url)).is_file() for _, _, url in page.links)
    assert sum(tag == "img" for tag, _, _ in page.links) == len(CASES)  # one thumbnail per case
    legend = " | ".join(page.legend)
    for text in ("predicted segmentation", "reference segmentation", "true positive", "false positive", "missed"):
        assert text in legend, text
    assert "no reference for this case" in page.rows["caseN"]["cells"]["case-problems"]
    assert "scored as an empty prediction" in page.rows["caseE"]["cells"]["case-problems"]
    for case in ("caseA", "caseB", "caseC", "caseP"):
        assert not page.rows[case]["cells"]["case-problems"] and "problem" not in page.rows[case]["attrs"].get("class", "")


def test_missed_cmbs_have_sheets(compared):
    page, out = _page(compared["html"]), compared["out"]
    for case, row in page.rows.items():
        fn = int(row["attrs"]["data-fn"] or 0)
        assert len(row["missed"]) == math.ceil(fn / MAX_PER_SHEET), case
        assert row["sheets"], case  # every drawable case has an overview sheet
    assert sorted(p.name for p in (out / "cases").glob("caseE_missed*.png")) == ["caseE_missed1.png", "caseE_missed2.png"]
    two_rows, one_row = imread(out / "cases/caseE_missed1.png"), imread(out / "cases/caseE_missed2.png")
    assert two_rows.shape[1] == one_row.shape[1] == 1200 and two_rows.shape[0] > one_row.shape[0] + 250
    assert _has_colour(two_rows, OUTCOME_COLORS["FN"]) and _has_colour(two_rows, REFERENCE_COLOR)


def test_sheets_draw_outcomes_in_their_colours(compared):
    cases = compared["out"] / "cases"
    sheet = imread(cases / "caseA_sheet1.png")  # overview + TP and TP/FP rows + legend
    for outcome in ("TP", "FP", "FN"):  # FN: circle on the overview and in the legend
        assert _has_colour(sheet, OUTCOME_COLORS[outcome]), outcome
    assert _has_colour(sheet, REFERENCE_COLOR)
    perfect = imread(cases / "caseP_sheet1.png")
    assert _has_colour(perfect, OUTCOME_COLORS["TP"])
    unscored = imread(cases / "caseN_sheet1.png")
    assert not _has_colour(unscored, REFERENCE_COLOR, region=slice(60, None))  # no reference to draw


def _has_colour(pixels: np.ndarray, colour: str, region: slice = slice(None), min_pixels: int = 15) -> bool:
    rgb = np.asarray([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    close = np.abs(pixels[region, :, :3] - rgb).max(axis=-1) < 0.08
    return int(close.sum()) >= min_pixels


# ------------------------------------------------------------------------------------------------ browser
def _browser():
    """A headless Chromium driven by selenium through the system ChromeDriver, or a skip."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs the selenium package")
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("the browser test needs Chromium and ChromeDriver (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_index_in_headless_browser(compared):
    browser = _browser()
    try:
        from selenium.webdriver.common.by import By

        browser.set_page_load_timeout(60)
        browser.get((compared["out"] / "index.html").resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        assert len(images) == len(CASES)
        assert all(done and width > 0 for _, done, width in images), images
        assert browser.find_element(By.ID, "legend").is_displayed()
        order = browser.execute_script("return Array.from(document.querySelectorAll('tr[id^=case-]')).map(r => r.id);")
        assert order == [f"case-{c}" for c in WORST_FIRST]
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        link = browser.find_element(By.CSS_SELECTOR, "#case-caseA a.missed-sheet")
        target = link.get_attribute("href")
        link.click()
        assert browser.current_url == target and target.endswith("cases/caseA_missed1.png")
        width = browser.execute_script("const i = document.images[0]; return i && i.complete ? i.naturalWidth : 0;")
        assert width == 1200  # the browser shows the PNG sheet itself
        browser.back()
        assert browser.current_url.endswith("index.html")
    finally:
        browser.quit()


def test_reference_errors_exit_2_before_writing(tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    _, mask = _phantom([(20, 20, 6)])
    SimpleITKIO.write(mask, pred / "caseX.nii.gz", _geometry())
    assert main(["-i", str(pred), "-ref", str(tmp_path / "nope"), "-o", str(tmp_path / "r")]) == 2
    assert "reference folder does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["-i", str(pred), "-ref", str(tmp_path / "empty"), "-o", str(tmp_path / "r")]) == 2
    assert "no reference label files found" in capsys.readouterr().err
    assert main(["-i", str(pred), "-ref", str(pred), "--dist", "0", "-o", str(tmp_path / "r")]) == 2
    assert "--dist must be positive" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
