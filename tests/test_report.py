"""The run report: a small run's outputs (finalized from staging rows built here, no Ray, no model),
its HTML and plots, and the page rendered in headless Chromium (Debian's chromium + chromedriver)."""
from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.report import Figure, Section, truth_from_synth, write_report
from pipeline.schema import STAGING_SCHEMA, Scoring
from pipeline.sinks import finalize
from demo.world import serve_folder

TAU = 0.5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNIDENTIFIED = "decode: UnidentifiedImageError: cannot identify image file <_io.BytesIO object at {}>"
# key -> (web text, web ITM, caption ITMs, truth noise, truth correct); None ITM: not scored
SPEC = {
    "k00": ("a red circle", 0.90, [0.7, 0.2], "clean", True),
    "k01": ("a blue square", 0.30, [0.8, 0.6], "mismatch", False),
    "k02": ("a green star", 0.80, [0.4, 0.3], "wrong_attribute", False),
    "k03": ("two <b>yellow</b> hearts", 0.55, [0.52, 0.1], "clean", True),
    "k04": ("", None, [0.9, 0.95], "empty", False),
    "k05": ("click here", 0.10, [0.6, 0.4], "junk", False),
    "k06": ("a pink cross", 0.70, [0.1, 0.2], "clean", True),
    "k07": ("a black triangle", 0.45, [0.5, 0.49], "clean", True),
    "d00": ("an orange ring", 0.20, [0.1, 0.3], "mismatch", False),
    "d01": ("a white moon", 0.40, [0.2, 0.2], "clean", True),
    "d02": ("img 2031 jpg", 0.05, [0.3, 0.1], "junk", False),
    "d03": ("", None, [0.2, 0.4], "empty", False),
    "d04": ("a small cyan box", 0.49, [], "wrong_attribute", True),  # judged correct: `correct` decides
    "d05": ("a purple heart", 0.30, [0.1, 0.1], None, None),  # no truth entry; its image is not in the tar
}
FAILED = {"f00": UNIDENTIFIED.format("0x7f3c2a1b2c3d"), "f01": UNIDENTIFIED.format("0x7f00deadbeef"),
          "f02": "download: HTTP Error 404: Not Found"}


def _image(key: str, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (sum(map(ord, key)) * 37 % 255, 120, 60)).save(buf, format=fmt)
    return buf.getvalue()


def _staging_rows() -> list[dict]:
    rows = []
    for key, (web, web_itm, caps_itm, _, _) in SPEC.items():
        captions = [f"synthetic {i} of {key}" for i in range(len(caps_itm))]
        texts = ([(web, "web", web_itm)] if web and web_itm >= TAU else []) + \
            [(c, "synthetic", s) for c, s in zip(captions, caps_itm) if s >= TAU]
        texts.sort(key=lambda x: -x[2])
        kept = bool(texts)
        rows.append(dict(key=key, url=f"http://127.0.0.1/{key}.jpg", web_text=web,
                         image=_image(key, "PNG" if key == "k03" else "JPEG"), width=48, height=32,
                         source_shard="00000", captions=captions, web_itm=web_itm, caption_itm=caps_itm,
                         status="kept" if kept else "dropped", error=None, kept_texts=[t for t, _, _ in texts],
                         kept_origins=[o for _, o, _ in texts], kept_scores=[s for _, _, s in texts],
                         source_key=None, original_width=96, original_height=64))
        assert kept == key.startswith("k"), key
    for key, error in FAILED.items():
        rows.append(dict(key=key, url=f"http://127.0.0.1/{key}.jpg", web_text="a thing", image=None, width=None,
                         height=None, source_shard="00000", captions=[], web_itm=None, caption_itm=[],
                         status="failed", error=error, kept_texts=[], kept_origins=[], kept_scores=[],
                         source_key=None, original_width=None, original_height=None))
    return rows


# the web text's ITC cosine, for a run that compares ITC beside ITM at ITC_TAU (None: not scored)
ITC = {"k00": 0.4, "k01": 0.1, "k02": 0.3, "k03": 0.2, "k04": None, "k05": 0.05, "k06": 0.5, "k07": 0.35,
       "d00": 0.2, "d01": 0.3, "d02": 0.1, "d03": None, "d04": 0.26, "d05": 0.1}
ITC_TAU = 0.25
TRUTH = {k: {"noise": n, "correct": c} for k, (_, _, _, n, c) in SPEC.items() if n is not None}
TRUTH.update({k: {"noise": "clean", "correct": True} for k in FAILED})  # failed rows are never counted


def _write_source(folder: Path) -> None:
    """An img2dataset-like input shard: its Parquet, and a tar with the dropped rows' images (not d05's)."""
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"key": list(SPEC)}), folder / "00000.parquet")
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for key in (k for k in SPEC if k.startswith("d") and k != "d05"):
            data = _image(key)
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _finalize(out: str, source: Path, filesystem=None, scoring: Scoring = Scoring(threshold=TAU), **kw) -> dict:
    fs = filesystem or fsspec.filesystem("file")
    staging = f"{out}/_staging"
    fs.makedirs(staging, exist_ok=True)
    rows = _staging_rows()
    if "itc" in scoring.names:  # ITC compared beside ITM: its scores of the same texts
        for r in rows:
            r["web_itc"] = ITC.get(r["key"])
            r["caption_itc"] = [s - 0.3 for s in r["caption_itm"]]
    for i, part in enumerate((rows[:7], rows[7:])):
        with fs.open(f"{staging}/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(part, scoring.staging_schema()), f)
    inputs = [{"shard": "00000", "parquet": str(source / "00000.parquet"), "sha256": "ab" * 32}]
    return finalize(staging, out, rows_per_shard=5, params={"mode": "capfilt", "seed": 3, "filter": {"threshold": TAU}},
                    scoring=scoring,
                    inputs=inputs, models=[{"role": "filter", "checkpoint": "tiny-itm", "sha256": "01" * 32}],
                    timings={"graph_s": 1.25}, filesystem=filesystem, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    _write_source(base / "source")
    _finalize(str(base / "out"), base / "source")
    return base / "out"


@pytest.fixture
def out(finished, tmp_path) -> Path:
    """A private copy of the finished run (each test writes its own report)."""
    return Path(shutil.copytree(finished, tmp_path / "out"))


def _cards(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<div class="card (kept|dropped)" data-key="([^"]+)"', html)


def test_report_html_counts_plots_and_colours(out):
    page = write_report(str(out), threshold=TAU, truth=TRUTH)
    assert page == str(out / "report" / "index.html")
    html = Path(page).read_text()
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert (c["rows_in"], c["kept"], c["dropped"], c["failed"]) == (17, 8, 6, 3)
    for name, value in (("rows-in", c["rows_in"]), ("rows-kept", c["kept"]), ("rows-dropped", c["dropped"]),
                        ("rows-failed", c["failed"]), ("kept-web", c["texts_kept"]["web"]),
                        ("kept-synthetic", c["texts_kept"]["synthetic"])):
        assert f'id="{name}">{value}<' in html, name
    for png in ("counts.png", "itm_web.png", "itm_synthetic.png", "itm_web_truth.png", "noise.png"):
        data = (out / "report" / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, png
        assert f'src="{png}"' in html

    # every kept and dropped row, kept cards first, each text coloured by its own decision
    assert _cards(html) == [("kept", k) for k in SPEC if k[0] == "k"] + [("dropped", k) for k in SPEC if k[0] == "d"]
    card = html[html.index('data-key="k07"'):html.index('data-key="d00"')]
    assert re.search(r'<li class="text dropped origin-web">.*a black triangle.*0\.450', card)
    assert re.search(r'<li class="text kept origin-synthetic">.*synthetic 0 of k07.*0\.500', card)
    assert re.search(r'<li class="text dropped origin-synthetic">.*synthetic 1 of k07.*0\.490', card)
    assert "two &lt;b&gt;yellow&lt;/b&gt; hearts" in html and "<b>yellow</b>" not in html  # escaped
    assert html.count('class="thumb"') == 13 and html.count('class="nothumb"') == 1  # d05 is not in the tar
    assert "web text ITM 0.49 &lt; 0.5" in html  # a dropped row's reason

    # failures grouped by reason, the object address not splitting them
    assert re.search(r"cannot identify image file &lt;_io.BytesIO object at 0x…&gt;</td><td class=\"num\">2<", html)
    assert re.search(r"HTTP Error 404: Not Found</td><td class=\"num\">1<", html)

    # precision and recall: 9 web texts dropped, 6 of them wrong; 7 wrong web texts in all
    assert 'id="precision">66.7%<' in html and 'id="recall">85.7%<' in html
    rows = dict(re.findall(r'<tr class="noise-(\w+)">(.*?)</tr>', html))
    cells = {k: re.findall(r'class="num">([^<]*)<', v) for k, v in rows.items()}
    assert cells == {"clean": ["5", "0", "2", "40.0%"], "mismatch": ["2", "2", "2", "100.0%"],
                     "wrong_attribute": ["2", "1", "1", "50.0%"], "junk": ["2", "2", "2", "100.0%"],
                     "empty": ["2", "2", "2", "100.0%"]}
    assert "1 row(s) had no truth entry" in html


def test_every_scorer_as_a_noise_detector_beside_the_deciding_one(tmp_path):
    """ITM decides, ITC is compared at its own threshold: both are reported against the truth, in
    the page and in figures.json, with the thresholds the manifest records."""
    _write_source(tmp_path / "source")
    out = tmp_path / "out"
    _finalize(str(out), tmp_path / "source", scoring=Scoring("itm", TAU, (("itc", ITC_TAU),)))
    html = Path(write_report(str(out), truth=TRUTH)).read_text()  # the scoring as the manifest records it
    figures = json.loads((out / "report" / "figures.json").read_text())
    assert figures["scoring"] == {"scorer": "itm", "threshold": TAU, "compare": {"itc": ITC_TAU}}
    assert list(figures["scorers"]) == ["itm", "itc"] and figures["scorers"]["itc"]["decides"] is False
    assert figures["scorers"]["itc"]["web_scored"] == 12  # every non-empty web text of a row that did not fail
    found = figures["truth"]["detectors"]
    # ITM (deciding: flagged = dropped): 9 web texts dropped, 6 of them wrong, of 7 wrong ones
    itm, itc = found["itm"]["overall"], found["itc"]["overall"]
    assert itm["precision"] == pytest.approx(6 / 9) and itm["recall"] == pytest.approx(6 / 7)
    # ITC below 0.25 or unscored: k01 k03 k04 k05 d00 d02 d03 flagged, all but the clean k03 wrong
    assert (itc["flagged"], itc["hits"]) == (7, 6)
    assert itc["precision"] == pytest.approx(6 / 7) and itc["recall"] == pytest.approx(6 / 7)
    noise = {r["noise"]: r for r in found["itc"]["noise"]}
    assert noise["clean"]["flagged_share"] == pytest.approx(1 / 5) and noise["clean"]["recall"] is None
    # per noise type: over that type's texts and the clean ones (k03, the clean one flagged, costs precision)
    assert (noise["mismatch"]["precision"], noise["mismatch"]["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (noise["wrong_attribute"]["precision"], noise["wrong_attribute"]["recall"]) == (0.0, 0.0)  # d04 is correct
    itm_noise = {r["noise"]: r for r in found["itm"]["noise"]}
    # ITM kept the wrong k02 (0.80) and dropped the correct d04 (0.49)
    assert itm_noise["wrong_attribute"]["flagged"] == 1 and itm_noise["wrong_attribute"]["recall"] == 0.0
    assert figures["truth"]["no_truth"] == 1
    for png in ("itm_web.png", "itc_web.png", "itc_synthetic.png", "itc_web_truth.png", "noise.png"):
        assert (out / "report" / png).read_bytes().startswith(PNG_MAGIC) and f'src="{png}"' in html, png
    assert "ITC cosine similarity (compared beside the deciding scorer, never deciding)" in html
    assert 'id="precision">66.7%<' in html  # the deciding scorer's own table stands
    cells = re.findall(r'class="num">([^<]*)<', re.search(r'<tr class="detect-mismatch">(.*?)</tr>', html).group(1))
    assert cells == ["100.0%", "50.0%", "100.0%", "100.0%", "66.7%", "100.0%"]  # ITM, then ITC: flagged, P, R


def test_sample_is_seeded_and_rerun_prunes(out):
    keys = [_cards(Path(write_report(str(out), threshold=TAU, truth=TRUTH, sample=4, seed=s)).read_text())
            for s in (1, 1, 2)]
    assert keys[0] == keys[1] and len(keys[0]) == 4
    assert [k for k, _ in keys[0]] == ["kept", "kept", "dropped", "dropped"]
    assert keys[0] != keys[2]
    html = Path(write_report(str(out), threshold=TAU, sample=0, source_images=False)).read_text()
    assert not (out / "report" / "itm_web_truth.png").exists() and not (out / "report" / "noise.png").exists()
    assert 'id="precision"' not in html and not _cards(html)
    assert sorted(p.name for p in (out / "report").iterdir()) == [
        "counts.png", "figures.json", "index.html", "itm_synthetic.png", "itm_web.png"]


def test_extra_sections(out):
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure()
    fig.add_subplot().plot([0, 1], [1, 0])
    sections = [Section("Round 2", ["retrieval <R@1> went up"], [Figure("r@1 per round", fig, "R@1"),
                                                                Figure("raw", _tiny_png())]),
                Section("Table only", table=(["round", "kept"], [[1, 10], [2, 12]]))]
    html = Path(write_report(str(out), threshold=TAU, sections=sections)).read_text()
    assert "retrieval &lt;R@1&gt; went up" in html and "<td>12</td>" in html
    names = sorted(p.name for p in (out / "report").glob("extra_*.png"))
    assert names == ["extra_00_00_r_1_per_round.png", "extra_00_01_raw.png"]
    assert all(f'src="{n}"' in html for n in names)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_report_on_an_fsspec_filesystem(tmp_path):
    _write_source(tmp_path / "source")
    fs = fsspec.filesystem("memory")
    root = f"memory://report-{uuid.uuid4().hex[:8]}"
    try:
        _finalize(root, tmp_path / "source", filesystem=fs)
        page = write_report(root, threshold=TAU, truth=TRUTH)
        assert page == f"{root}/report/index.html"
        assert 'id="rows-in">17<' in fs.cat(page).decode()
        assert fs.cat(f"{root}/report/itm_web.png").startswith(PNG_MAGIC)
    finally:
        fs.rm(root, recursive=True)


def test_truth_from_synth(tmp_path):
    shards, world = tmp_path / "dl", tmp_path / "world"
    shards.mkdir()
    (world / "truth").mkdir(parents=True)
    pq.write_table(pa.table({"key": ["000000000", "000000001"], "source_key": ["web_000001", "web_000009"],
                             "status": ["success", "success"]}), shards / "00000.parquet")
    pq.write_table(pa.table({"key": ["web_000001", "web_000002"], "noise": ["junk", "clean"],
                             "judged_correct": [False, True]}), world / "truth" / "web.parquet")
    assert truth_from_synth(str(shards), str(world)) == {"000000000": {"noise": "junk", "correct": False}}


# ---- in the browser ------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# A closed network: no sign-in, update, sync or QUIC traffic; a fresh profile every time.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.fixture
def browser(monkeypatch):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed: run scripts/install-test-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never look for a driver or browser online
    profile = tempfile.mkdtemp(prefix="capfilt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a driver path: no Selenium Manager
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_headless_chromium(out, browser):
    write_report(str(out), threshold=TAU, truth=TRUTH)
    with serve_folder(out / "report") as base:
        browser.get(f"{base}/index.html")
        state = browser.execute_script("""
            const info = img => ({src: img.getAttribute('src').slice(0, 40), complete: img.complete,
                                  w: img.naturalWidth});
            return {ready: document.readyState, title: document.title,
                    thumbs: [...document.querySelectorAll('.grid img.thumb')].map(info),
                    plots: [...document.querySelectorAll('img.plot')].map(info),
                    kept: document.querySelectorAll('.card.kept').length,
                    dropped: document.querySelectorAll('.card.dropped').length,
                    green: getComputedStyle(document.querySelector('li.text.kept')).backgroundColor,
                    red: getComputedStyle(document.querySelector('li.text.dropped')).backgroundColor};
        """)
        logs = browser.get_log("browser")
    errors = [e for e in logs if e["level"] == "SEVERE"]
    assert not errors, errors
    assert state["ready"] == "complete" and state["title"] == "CapFilt run report"
    assert (state["kept"], state["dropped"]) == (8, 6)
    assert len(state["thumbs"]) == 13 and all(i["complete"] and i["w"] > 0 for i in state["thumbs"]), state["thumbs"]
    assert sorted(i["src"] for i in state["plots"]) == sorted(
        ["counts.png", "itm_web.png", "itm_synthetic.png", "itm_web_truth.png", "noise.png"])
    assert all(i["complete"] and i["w"] >= 300 for i in state["plots"]), state["plots"]
    assert state["green"] == "rgb(232, 245, 233)" and state["red"] == "rgb(255, 235, 238)"


# -- the release sections: a calibrated threshold, duplicates, best of N (pipeline/report_release.py)

class _JudgedTruth(dict):
    """TRUTH, and a judge of synthetic captions: here caption 0 of every image is true, the rest false."""

    def caption_correct(self, key, text):
        return text.startswith("synthetic 0 ")


CALIBRATION = {"path": "calibration.json", "scorer": "itm", "target_precision": 0.9, "threshold": TAU,
               "fit_pairs": 40, "held_out_pairs": 40, "fit": {"precision": 0.91, "recall": 0.6},
               "held_out": {"precision": 0.88, "recall": 0.55},
               "curve": {"threshold": [0.9, 0.5, 0.1], "precision": [1.0, 0.9, 0.5], "recall": [0.2, 0.6, 1.0]}}
LINEAGE = {"round": None, "previous": None, "captioner_sha256": None, "filter_sha256": ["01" * 32], "mode": "capfilt",
           "scorer": "itm", "threshold": TAU, "keep": {"captions": "threshold", "top_k": 1}}


def _release_report(tmp_path, **finalize):
    base = tmp_path / "release"
    truth = _JudgedTruth(TRUTH, **finalize.pop("truth", {}))
    _write_source(base / "source")
    _finalize(str(base / "out"), base / "source", **finalize)
    page = write_report(str(base / "out"), truth=truth)
    return Path(page).read_text(), json.loads((base / "out" / "report" / "figures.json").read_text())["release"], base


def test_best_of_n_against_n_1_diversity_and_truth_by_hand(tmp_path):
    html, release, _ = _release_report(tmp_path)
    b = release["best_of_n"]
    # kept at 0.5: captions 0 of k00 k01 k03 k04 k05 k07, captions 1 of k01 k04; N = 1 keeps the six captions 0
    assert b["n"] == 2
    assert (b["kept"]["captions"], b["kept"]["images"], b["n_1"]["captions"], b["n_1"]["images"]) == (8, 6, 6, 6)
    # words "synthetic I of KEY": 1-grams {synthetic, of, 0, 1, six keys} of 32; N = 1: {synthetic, of, 0, six keys} of 24
    assert b["kept"]["distinct_1"] == pytest.approx(10 / 32) and b["n_1"]["distinct_1"] == pytest.approx(9 / 24)
    assert b["kept"]["distinct_2"] == pytest.approx(10 / 24) and b["n_1"]["distinct_2"] == pytest.approx(8 / 18)
    assert b["kept"]["correct"] == pytest.approx(6 / 8) and b["n_1"]["correct"] == 1.0  # the judge: caption 0 only
    assert "Best of N" in html and "N = 1 (caption 0 alone)" in html
    assert "calibration" not in release and "duplicates" not in release  # neither applies to this run


def test_the_calibrated_threshold_its_curve_and_the_truth_at_it(tmp_path):
    html, release, base = _release_report(tmp_path, lineage={**LINEAGE, "calibration": CALIBRATION})
    c = release["calibration"]
    assert (c["threshold"], c["target_precision"], c["held_out"]) == (TAU, 0.9, CALIBRATION["held_out"])
    # web texts kept at 0.5: k00 k02 k03 k06, three of them true; true web texts: k00 k03 k06 k07 d01 d04
    assert c["truth_at_threshold"] == {"kept": 4, "correct": 6, "correct_kept": 3, "precision": 0.75, "recall": 0.5}
    assert "Calibrated threshold" in html and "75.0% of the 4 kept are true" in html
    assert (base / "out" / "report" / "extra_00_00_calibration.png").read_bytes().startswith(PNG_MAGIC)


def test_the_duplicates_removed_and_what_they_would_have_done_to_the_noise(tmp_path, monkeypatch):
    """z00 copies k00's image byte for byte under a wrong web text that passes τ: dedup removes it."""
    from types import SimpleNamespace

    import hashlib

    rows = _staging_rows()
    copy = dict(next(r for r in rows if r["key"] == "k00"), key="z00", web_text="a wrong text", web_itm=0.6,
                captions=[], caption_itm=[], kept_texts=["a wrong text"], kept_origins=["web"], kept_scores=[0.6])
    rows.append(copy)
    for r in rows:
        r["image_sha256"] = hashlib.sha256(r["image"]).hexdigest() if r["image"] else None
        r["image_hash"] = "0" * 16 if r["image"] else None
    monkeypatch.setattr(sys.modules[__name__], "_staging_rows", lambda: rows)
    dedup = SimpleNamespace(exact=True, near=False, hash="dhash", hash_size=8, max_distance=8, against=[])
    html, release, base = _release_report(tmp_path, dedup=dedup, truth={"z00": {"noise": "mismatch", "correct": False}})
    d = release["duplicates"]
    # the filter did not drop the copy: the detector figures stay those of the run without it (6/9, 6/7)
    itm = json.loads((base / "out" / "report" / "figures.json").read_text())["truth"]["detectors"]["itm"]["overall"]
    assert (itm["flagged"], itm["hits"], itm["wrong"]) == (9, 6, 7)
    assert (d["removed"], d["within_run"], d["of_earlier_versions"], d["exact"], d["near"]) == (1, 1, 0, 1, 0)
    # kept web texts k00 k02 k03 k06, one wrong; with z00's wrong one: two of five
    assert (d["copies_noisy"], d["copies_passing"], d["noisy_kept"], d["noisy_kept_with_copies"]) == (1.0, 1, 0.25, 0.4)
    assert "Duplicates" in html and "1 exact (the same bytes)" in html
