"""cmbunet_report on a hand-built prediction folder of real NIfTI files: sheets, index page, links, problems."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from scipy.spatial.transform import Rotation

from cmbunet.imageio import SimpleITKIO
from cmbunet.report.cli import main, unique_names
from cmbunet.report.panels import choose_overview_slices, crop_view, outline_segments
from cmbunet.report.volumes import axis_letters, normalise_cmb_table
from cmbunet.utilities.geometry import voxel_to_world, world_to_voxel

SHAPE = (48, 44, 14)
SPACING = [0.6, 0.7, 2.5]


def _geometry(shape=SHAPE, spacing=SPACING) -> dict:
    """An oblique (rotated 20/10/5 degrees) anisotropic grid, as real T2* scans often are."""
    rot = Rotation.from_euler("zyx", [20, 10, 5], degrees=True).as_matrix()
    return {"spacing": list(spacing), "origin": [-12.0, 30.0, 5.0], "direction": rot.ravel().tolist(), "shape": list(shape)}


def _phantom(centres_vox: list[tuple[int, int, int]], radius_mm: float = 1.6, seed: int = 0):
    """T2*-like image (bright ellipsoidal brain on a zero background, noise) with dark spheres and their mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1) * np.asarray(SPACING)
    centre = (np.asarray(SHAPE) - 1) / 2 * np.asarray(SPACING)
    brain = (((grid - centre) / (centre * 0.9)) ** 2).sum(-1) <= 1
    image = np.where(brain, 100 + 5 * rng.standard_normal(SHAPE), 0).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    for c in centres_vox:
        sphere = (((grid - np.asarray(c) * np.asarray(SPACING)) ** 2).sum(-1) <= radius_mm**2) & brain
        image[sphere] = 25
        mask[sphere] = 1
    return image, mask


def _cmb_csv(mask: np.ndarray, geometry: dict, path: Path) -> pd.DataFrame:
    """The CSV cmbunet_predict writes, computed here with plain numpy for each sphere (one per z slice band)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    rows = []
    for lab in range(1, n + 1):
        vox = np.argwhere(labels == lab)
        com = vox.mean(0)
        world = voxel_to_world(com, geometry)[0]
        rows.append({"id": lab, "i": int(round(com[0])), "j": int(round(com[1])), "k": int(round(com[2])),
                     "x_mm": world[0], "y_mm": world[1], "z_mm": world[2], "volume_mm3": len(vox) * np.prod(SPACING),
                     "screening_score": 0.9, "discrimination_score": 0.8 - 0.1 * lab, "segmentation_score": 0.95})
    table = pd.DataFrame(rows, columns=["id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "volume_mm3",
                                        "screening_score", "discrimination_score", "segmentation_score"])
    table.to_csv(path, index=False)
    return table


@pytest.fixture(scope="module")
def prediction(tmp_path_factory) -> dict:
    """caseA: 3 CMBs with CSV and image; caseB: no CMB; sub-101: VALDO naming, no CSV and no image;
    caseD: 1 CMB whose image file is corrupt. Also summary.csv, an evaluation folder and a progress.png."""
    root = tmp_path_factory.mktemp("report")
    pred, img = root / "pred", root / "images"
    pred.mkdir()
    img.mkdir()
    geo = _geometry()
    image_a, mask_a = _phantom([(14, 14, 4), (30, 24, 7), (24, 30, 10)])
    image_b, mask_b = _phantom([], seed=1)
    _, mask_c = _phantom([(20, 20, 6), (30, 14, 8)])
    _, mask_d = _phantom([(24, 22, 7)])
    for case, image, mask in (("caseA", image_a, mask_a), ("caseB", image_b, mask_b)):
        SimpleITKIO.write(image, img / f"{case}_0000.nii.gz", geo)
        SimpleITKIO.write(mask, pred / f"{case}.nii.gz", geo)
    (img / "caseD_0000.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    SimpleITKIO.write(mask_d, pred / "caseD.nii.gz", geo)
    SimpleITKIO.write(mask_c, pred / "sub-101_space-T2S_prediction.nii.gz", geo)
    tables = {c: _cmb_csv(m, geo, pred / f"{c}_cmbs.csv") for c, m in (("caseA", mask_a), ("caseB", mask_b), ("caseD", mask_d))}
    pd.DataFrame({"case": ["caseA", "caseB", "caseD", "sub-101"], "num_cmbs": [3, 0, 1, 2],
                  "total_volume_mm3": [1.0, 0.0, 1.0, 1.0], "status": ["ok", "ok", "ok", "ok"],
                  "error": ["", "", "", ""], "seconds_total": [1.5, 1.2, 1.1, 1.3]}).to_csv(pred / "summary.csv", index=False)
    (pred / "evaluation").mkdir()
    (pred / "evaluation" / "summary.json").write_text(json.dumps(
        {"aggregate": {"num_cases": 4, "f1_mean": 0.6789, "sensitivity": 0.75, "fp_per_case": 0.5, "dice_mean": 0.4321}}))
    shutil.copyfile(_png(root), pred / "evaluation" / "froc.png")
    progress = root / "model" / "fold_0" / "screening"
    progress.mkdir(parents=True)
    shutil.copyfile(_png(root), progress / "progress.png")
    (root / "model" / "fold_0" / "segmentation").mkdir()
    shutil.copyfile(_png(root), root / "model" / "fold_0" / "segmentation" / "progress.png")
    out = root / "report"
    code = main(["-i", str(pred), "-img", str(img), "-o", str(out), "--max-cmbs-per-sheet", "2",
                 "--extra-images", str(root / "model")])
    return {"root": root, "pred": pred, "out": out, "code": code, "tables": tables, "mask_c": mask_c,
            "html": (out / "index.html").read_text() if (out / "index.html").is_file() else ""}


def _png(root: Path) -> Path:
    """A small real PNG (a plot) to stand in for a training curve or FROC figure."""
    path = root / "plot.png"
    if not path.is_file():
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 2))
        fig.subplots().plot([0, 1, 2], [0.1, 0.5, 0.7])
        fig.savefig(path)
    return path


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def _case_counts(html: str) -> dict[str, str]:
    return dict(re.findall(r'<tr[^>]*id="case-([^"]+)"><td>[^<]*</td><td class="num cmb-count">([^<]*)</td>', html))


def _row(html: str, case: str) -> str:
    return re.search(rf'<tr[^>]*id="case-{re.escape(case)}">.*?</tr>', html, re.S).group(0)


def test_cli_writes_sheets_for_every_case(prediction):
    assert prediction["code"] == 0
    cases = prediction["out"] / "cases"
    # caseA has 3 CMBs at 2 per sheet -> two sheets; every other case one sheet (the overview).
    expected = {"caseA": 2, "caseB": 1, "caseD": 1, "sub-101": 1}
    for case, n in expected.items():
        sheets = sorted(cases.glob(f"{case}_sheet*.png"))
        assert len(sheets) == n, case
        for sheet in sheets:
            pixels = imread(sheet)
            assert pixels.shape[1] == 1200 and 400 < pixels.shape[0] < 6000
            assert pixels[..., :3].std() > 0.05  # not a blank page
        thumb = imread(cases / f"{case}_thumb.png")
        assert 100 < thumb.shape[1] < 400
    # sheet 1 of caseA (overview + 2 CMB rows) is taller than caseB's overview-only sheet
    assert imread(cases / "caseA_sheet1.png").shape[0] > imread(cases / "caseB_sheet1.png").shape[0] + 300


def test_index_links_resolve_and_page_is_offline(prediction):
    parser = _Links()
    parser.feed(prediction["html"])
    assert len(parser.links) >= 4 + 4 + 3
    for link in parser.links:
        assert not re.match(r"^[a-z]+:", link) and not link.startswith("/"), link
        assert (prediction["out"] / unquote(link)).is_file(), link
    assert "script" not in parser.tags and "<link" not in prediction["html"]
    assert "extras/screening_progress.png" in parser.links
    assert "extras/segmentation_progress.png" in parser.links
    assert "evaluation/froc.png" in parser.links


def test_index_counts_match_the_tables(prediction):
    counts = _case_counts(prediction["html"])
    assert counts == {"caseA": "3", "caseB": "0", "caseD": "1", "sub-101": "2"}
    assert {c: len(t) for c, t in prediction["tables"].items()} == {"caseA": 3, "caseB": 0, "caseD": 1}
    volume = prediction["tables"]["caseA"]["volume_mm3"].sum()
    assert f"<td class=\"num\">{volume:.1f}</td>" in _row(prediction["html"], "caseA")
    assert 'id="total-cmbs">6<' in prediction["html"]


def test_problems_are_reported_per_case(prediction):
    html = prediction["html"]
    valdo = _row(html, "sub-101")
    assert "no T2* image for this case" in valdo
    assert "sub-101_cmbs.csv not found" in valdo
    assert "image not shown" in _row(html, "caseD") and "cannot be read" in _row(html, "caseD")
    assert 'class="problem"' not in _row(html, "caseA") and 'class="problem"' not in _row(html, "caseB")
    assert "0.679" in html and "0.432" in html and "false positives per case" in html


def test_report_with_valdo_images_and_no_images(tmp_path, prediction):
    """A VALDO tree as -img shows the image without problems; without -img the masks alone are drawn."""
    pred = tmp_path / "pred"
    pred.mkdir()
    geo = _geometry()
    image, mask = _phantom([(20, 20, 6)])
    SimpleITKIO.write(mask, pred / "sub-102_space-T2S_prediction.nii.gz", geo)
    (tmp_path / "valdo" / "sub-102").mkdir(parents=True)
    SimpleITKIO.write(image, tmp_path / "valdo" / "sub-102" / "sub-102_space-T2S_desc-masked_T2S.nii.gz", geo)
    pd.DataFrame({"id": [1], "x_mm": voxel_to_world(np.array([20, 20, 6]), geo)[:, 0],
                  "y_mm": voxel_to_world(np.array([20, 20, 6]), geo)[:, 1],
                  "z_mm": voxel_to_world(np.array([20, 20, 6]), geo)[:, 2]}).to_csv(pred / "sub-102_cmbs.csv", index=False)
    assert main(["-i", str(pred), "-img", str(tmp_path / "valdo"), "-o", str(tmp_path / "r1")]) == 0
    row = _row((tmp_path / "r1" / "index.html").read_text(), "sub-102")
    assert "image not shown" not in row and "no T2* image" not in row
    assert "computed from the world centres" in row  # CSV without i, j, k
    assert _case_counts(row)["sub-102"] == "1"
    assert main(["-i", str(pred), "-o", str(tmp_path / "r2")]) == 0
    with_image, without = imread(tmp_path / "r1/cases/sub-102_sheet1.png"), imread(tmp_path / "r2/cases/sub-102_sheet1.png")
    assert with_image.shape[1] == without.shape[1] == 1200
    assert not np.array_equal(with_image[:200], without[:200])


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "r")]) == 2
    assert "prediction folder does not exist" in capsys.readouterr().err
    (tmp_path / "pred").mkdir()
    assert main(["-i", str(tmp_path / "pred"), "-o", str(tmp_path / "r")]) == 2
    assert "no predictions found" in capsys.readouterr().err
    assert main(["-i", str(tmp_path / "pred"), "-o", str(tmp_path / "r"), "--extra-images", str(tmp_path / "nope.png")]) == 2
    assert not (tmp_path / "r").exists()


def test_geometry_helpers():
    geo = _geometry()
    pts = np.array([[3.0, 4.0, 5.0], [0.0, 0.0, 0.0], [47, 43, 13]])
    assert np.allclose(world_to_voxel(voxel_to_world(pts, geo), geo), pts)
    assert axis_letters({"direction": np.eye(3).ravel().tolist()}) == [("R", "L"), ("A", "P"), ("I", "S")]
    assert axis_letters({"direction": np.diag([-1.0, -1.0, 1.0]).ravel().tolist()}) == [("L", "R"), ("P", "A"), ("I", "S")]
    # a single voxel has a 4-segment outline of its borders, in mm
    segs = outline_segments(np.array([[0, 0], [0, 1]]), np.array([0.0, 1, 2]), np.array([0.0, 3, 6]))
    assert len(segs) == 4 and segs[:, :, 0].min() == 1 and segs[:, :, 1].min() == 3 and segs.max() == 6
    # crops stay centred at the border: out-of-volume voxels are NaN
    vol = np.arange(5 * 6 * 7, dtype=float).reshape(5, 6, 7)
    plane = crop_view(vol, (0, 3, 2), "axial", (2, 2, 2))
    assert plane.shape == (5, 5) and np.isnan(plane[:2]).all() and plane[2, 2] == vol[0, 3, 2]
    assert crop_view(vol, (1, 3, 2), "sagittal", (2, 2, 2))[2, 2] == vol[1, 3, 2]


def test_overview_slices_include_every_cmb_slice():
    chosen = choose_overview_slices((2, 40), [7, 7, 19, 33], 12)
    assert {7, 19, 33} <= set(chosen) and len(chosen) == 12 and chosen.min() >= 2 and chosen.max() <= 40
    assert len(choose_overview_slices((0, 3), [], 16)) == 4


def test_table_without_centres_falls_back_to_the_mask():
    geo = _geometry()
    _, mask = _phantom([(14, 14, 4), (30, 24, 7)])
    table, notes = normalise_cmb_table(pd.DataFrame({"id": [1], "volume_mm3": [3.0]}), mask > 0, geo)
    assert len(table) == 2 and notes and set(table["k"]) == {4, 7}
    table, notes = normalise_cmb_table(pd.DataFrame({"i": [5, 500], "j": [5, 5], "k": [5, 5]}), mask > 0, geo)
    assert list(table["id"]) == [1] and "skipped" in notes[0]


def test_unique_names():
    paths = [Path("/m/fold_0/screening/progress.png"), Path("/m/fold_1/screening/progress.png"), Path("/x/froc.png")]
    assert unique_names(paths) == ["fold_0_screening_progress.png", "fold_1_screening_progress.png", "froc.png"]


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_index_renders_in_headless_chromium(prediction, tmp_path):
    shot = tmp_path / "index.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (prediction["out"] / "index.html").resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05 and (pixels.mean(-1) < 0.3).mean() > 0.01  # text and dark thumbnails present
