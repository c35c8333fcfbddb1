"""Tests of the synthetic data generator: determinism, geometry, labels against the truth, contrast, layouts."""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest
from scipy import ndimage

from cmbunet.errors import InputError
from cmbunet.imageio import SimpleITKIO
from cmbunet.synthetic import synthesize_case, write_dataset
from cmbunet.synthetic.cli import main as cli_main
from cmbunet.synthetic.sites import SITES

STRUCT26 = np.ones((3, 3, 3), dtype=bool)
SEEDS = range(12)


@pytest.fixture(scope="module")
def cases():
    return {s: synthesize_case(s) for s in SEEDS}


def _raw_nifti_float32(path) -> np.ndarray:
    """Voxel values straight from the file (SimpleITK turns NaN into 0 when reading NIfTI)."""
    blob = gzip.open(path).read()
    dims = np.frombuffer(blob[40:56], dtype=np.int16)[1:4]
    offset = int(np.frombuffer(blob[108:112], dtype=np.float32)[0])
    return np.frombuffer(blob[offset:], dtype=np.float32).reshape(tuple(dims), order="F")


def _components(label: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(label, STRUCT26)


def test_same_seed_identical_different_seed_differs(cases):
    again = synthesize_case(3)
    assert np.array_equal(cases[3].images["T2S"], again.images["T2S"]) and np.array_equal(cases[3].label, again.label)
    assert cases[3].props == again.props and cases[3].cmbs == again.cmbs and cases[3].mimics == again.mimics
    other = cases[4]
    assert cases[3].props["spacing"] != other.props["spacing"]
    assert cases[3].props["shape"] != other.props["shape"] or not np.array_equal(cases[3].images["T2S"], other.images["T2S"])


def test_t2s_does_not_depend_on_the_other_channels_asked_for():
    one = synthesize_case(7, modalities=("T2S",))
    three = synthesize_case(7, modalities=("T2S", "T1", "T2"))
    assert np.array_equal(one.images["T2S"], three.images["T2S"])
    assert set(three.images) == {"T2S", "T1", "T2"}
    assert not np.array_equal(three.images["T1"], three.images["T2S"])


def test_geometry_is_oblique_anisotropic_and_varies(cases):
    spacings, origins = [], []
    for case in cases.values():
        d = np.array(case.props["direction"]).reshape(3, 3)
        assert np.allclose(d @ d.T, np.eye(3), atol=1e-6)
        angle = np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1)))
        assert 2.9 <= angle <= 20.1
        sp = np.array(case.props["spacing"])
        assert 0.8 <= sp[0] <= 1.3 * 1.05 and 1.0 <= sp[2] <= 2.5
        assert case.images["T2S"].shape == tuple(case.props["shape"]) and min(case.props["shape"]) >= 32
        spacings.append(sp)
        origins.append(case.props["origin"])
    spacings = np.array(spacings)
    assert np.ptp(spacings[:, 0]) > 0.2 and np.ptp(spacings[:, 2]) > 0.5
    assert np.mean(spacings[:, 2] / spacings[:, 0]) > 1.2
    assert len({tuple(np.round(o, 3)) for o in origins}) == len(origins)


def test_label_matches_truth_and_physical_sizes(cases):
    for case in cases.values():
        comps, n = _components(case.label)
        assert n == len(case.cmbs)
        if n == 0:
            continue
        centres = np.array(ndimage.center_of_mass(case.label, comps, range(1, n + 1)))
        truth = np.array([c["center_voxel"] for c in case.cmbs])
        dist = np.abs(centres[:, None, :] - truth[None, :, :]).max(axis=-1)
        assert np.all(dist.min(axis=1) <= 1.0) and np.all(dist.min(axis=0) <= 1.0)
        voxel_mm3 = float(np.prod(case.props["spacing"]))
        sizes = ndimage.sum(case.label, comps, range(1, n + 1))
        for cmb in case.cmbs:
            assert 0.7 <= cmb["radius_mm"] <= 3.5
            expected = 4 / 3 * np.pi * cmb["radius_mm"] ** 3
            if expected > 15 * voxel_mm3:  # well-sampled spheres: voxel count follows the physical volume
                assert 0.5 < cmb["num_voxels"] * voxel_mm3 / expected < 1.6
        assert sorted(sizes.astype(int).tolist()) == sorted(c["num_voxels"] for c in case.cmbs)


def test_world_centres_follow_the_geometry(cases):
    case = next(c for c in cases.values() if c.cmbs)
    img = SimpleITKIO.to_sitk(case.images["T2S"], case.props)
    for cmb in case.cmbs + case.mimics:
        world = img.TransformContinuousIndexToPhysicalPoint([float(v) for v in cmb["center_voxel"]])
        assert np.allclose(world, cmb["center_world_mm"], atol=1e-4)


def test_cmbs_are_darker_than_their_surroundings(cases):
    for case in cases.values():
        img, lab = case.images["T2S"], case.label
        comps, n = _components(lab)
        for i, sl in enumerate(ndimage.find_objects(comps)):
            box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in sl)
            comp = comps[box] == i + 1
            near = ndimage.binary_dilation(comp, STRUCT26, iterations=1)
            ring = ndimage.binary_dilation(comp, STRUCT26, iterations=3) & ~near & case.brain[box] & (lab[box] == 0)
            assert img[box][comp].min() < 0.85 * np.median(img[box][ring]), (case.meta["seed"], case.cmbs[i])


def test_background_is_zero_and_lesions_lie_in_the_brain(cases):
    for case in cases.values():
        for img in case.images.values():
            assert img.dtype == np.float32 and np.all(img[~case.brain] == 0) and np.all(img[case.brain] > 0)
            assert np.isfinite(img).all()
        assert case.label.dtype == np.uint8 and not np.any(case.label & ~case.brain)
        assert 0.15 < case.brain.mean() < 0.75


def test_mimics_are_unlabelled_and_present(cases):
    kinds = set()
    for case in cases.values():
        for m in case.mimics:
            kinds.add(m["kind"])
            v = np.rint(m["center_voxel"]).astype(int)
            if m["kind"] != "iron_deep_gm":
                assert case.label[tuple(v)] == 0
            for c in case.cmbs:
                d_mm = np.linalg.norm(np.subtract(m["center_world_mm"], c["center_world_mm"]))
                assert m["kind"] == "iron_deep_gm" or d_mm > c["radius_mm"] + 1.0
        assert any(m["kind"] == "vein" for m in case.mimics)
    assert {"vein", "calcification", "iron_deep_gm"} <= kinds
    assert kinds & {"elongated_spot", "flat_spot"}


def test_cmb_counts_vary_with_some_empty_cases(cases):
    counts = [len(c.cmbs) for c in cases.values()]
    assert all(0 <= n <= 15 for n in counts)
    assert 0 in counts and max(counts) >= 3 and len(set(counts)) >= 4


def test_forced_count_and_t1_hides_cmbs():
    case = synthesize_case(21, num_cmbs=10, modalities=("T2S", "T1"))
    assert len(case.cmbs) == 10 and _components(case.label)[1] == 10
    drop = {}
    for m in ("T2S", "T1"):
        img = ndimage.median_filter(case.images[m], size=3)
        ring = ndimage.binary_dilation(case.label, iterations=3) & ~ndimage.binary_dilation(case.label) & case.brain
        drop[m] = 1 - img[case.label > 0].mean() / img[ring].mean()
    assert drop["T2S"] > 0.15 and abs(drop["T1"]) < 0.5 * drop["T2S"]
    with pytest.raises(ValueError):
        synthesize_case(0, modalities=("FLAIR",))


def test_small_cases_are_fast():
    t0 = time.perf_counter()
    for s in range(3):
        synthesize_case(100 + s)
    assert (time.perf_counter() - t0) / 3 < 2.0


def test_realistic_case():
    t0 = time.perf_counter()
    case = synthesize_case(1, size="realistic")
    elapsed = time.perf_counter() - t0
    sp = np.array(case.props["spacing"])
    site = SITES[case.meta["site"]]
    assert case.meta["anatomy"] == "template"
    assert site.inplane_mm[0] <= sp[0] <= site.inplane_mm[1] and site.slice_mm[0] <= sp[2] <= site.slice_mm[1]
    extent_mm = np.array(case.props["shape"]) * sp
    assert np.all(extent_mm[:2] > 130) and extent_mm[2] > 110
    assert _components(case.label)[1] == len(case.cmbs)
    assert elapsed < 60


def test_raw_layout_cli(tmp_path):
    out = tmp_path / "Dataset001_Synthetic"
    assert cli_main(["-o", str(out), "--cases", "2", "--test-cases", "1", "--seed", "5", "--modalities", "T2S", "T1"]) == 0
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2S", "1": "T1"} and ds["labels"] == {"background": 0, "CMB": 1}
    assert ds["numTraining"] == 2 and ds["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "synth_000_0000.nii.gz", "synth_000_0001.nii.gz", "synth_001_0000.nii.gz", "synth_001_0001.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["synth_002.nii.gz"]
    assert (out / "imagesTs" / "synth_002_0001.nii.gz").is_file()
    img, props = SimpleITKIO.read_images(sorted((out / "imagesTr").glob("synth_000_*.nii.gz")))
    seg, _ = SimpleITKIO.read_seg(out / "labelsTr" / "synth_000.nii.gz")
    truth = json.loads((out / "synthetic_truth.json").read_text())["cases"]
    assert set(truth) == {"synth_000", "synth_001", "synth_002"} and truth["synth_002"]["split"] == "test"
    assert _components(seg)[1] == len(truth["synth_000"]["cmbs"])
    assert list(img.shape) == [2, *props["shape"]] and props["shape"] == truth["synth_000"]["shape"]
    # same seed through the API: identical arrays on disk
    again = write_dataset(tmp_path / "again", 2, seed=5, modalities=("T2S", "T1"))
    img2, _ = SimpleITKIO.read_images(sorted((again / "imagesTr").glob("synth_000_*.nii.gz")))
    assert np.array_equal(img, img2)


def test_dataset_id_puts_the_dataset_under_the_root(tmp_path):
    assert cli_main(["-o", str(tmp_path), "--cases", "1", "--dataset-id", "7", "--name", "Demo"]) == 0
    assert json.loads((tmp_path / "Dataset007_Demo" / "dataset.json").read_text())["name"] == "Demo"


def test_valdo_layout_cli(tmp_path):
    out = tmp_path / "valdo"
    assert cli_main(["-o", str(out), "--cases", "4", "--test-cases", "2", "--layout", "valdo", "--seed", "2"]) == 0
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["sub-101", "sub-102", "sub-103", "sub-104"]
    assert sorted(p.name for p in (tmp_path / "valdo_test").iterdir() if p.is_dir()) == ["sub-105", "sub-106"]
    names = sorted(p.name for p in (out / "sub-101").iterdir())
    assert names == ["sub-101_space-T2S_CMB.nii.gz"] + [f"sub-101_space-T2S_desc-masked_{m}.nii.gz" for m in ("T1", "T2", "T2S")]
    truth = json.loads((out / "synthetic_truth.json").read_text())["cases"]
    assert len(truth) == 6 and sum(t["has_nan"] for t in truth.values()) >= 1
    for sub, t in truth.items():
        folder = out if t["split"] == "train" else tmp_path / "valdo_test"
        seg, _ = SimpleITKIO.read_seg(folder / sub / f"{sub}_space-T2S_CMB.nii.gz")
        for m in ("T1", "T2", "T2S"):
            img = _raw_nifti_float32(folder / sub / f"{sub}_space-T2S_desc-masked_{m}.nii.gz")
            nan = np.isnan(img)
            assert img.shape == seg.shape and nan.any() == t["has_nan"] and not np.any(seg[nan])
        assert _components(seg)[1] == t["num_cmbs"]
    assert json.loads((tmp_path / "valdo_test" / "synthetic_truth.json").read_text())["cases"].keys() == {"sub-105", "sub-106"}


def test_bad_arguments_are_reported(tmp_path, capsys):
    with pytest.raises(InputError):
        write_dataset(tmp_path / "x", 1, layout="bids")
    with pytest.raises(InputError):
        write_dataset(tmp_path / "x", 0)
    assert cli_main(["-o", str(tmp_path / "y"), "--cases", "0"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("site", sorted(SITES))
def test_each_site_draws_its_own_acquisition(site):
    case = synthesize_case(40, sites=[site], num_cmbs=3)
    sp = np.array(case.props["spacing"])
    s = SITES[site]
    assert case.meta["site"] == site
    assert s.inplane_mm[0] <= sp[0] <= s.inplane_mm[1] and s.slice_mm[0] <= sp[2] <= s.slice_mm[1]
    assert _components(case.label)[1] == 3


def test_unknown_site_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown site"):
        synthesize_case(0, sites=["nowhere"])
    with pytest.raises(InputError, match="unknown site"):
        write_dataset(tmp_path / "x", 1, sites=["nowhere"])


def test_template_anatomy_is_real_and_differs_between_subjects():
    """Warped MNI152 brains: ventricles (bright CSF) near the middle, darker cortex, and no two brains alike."""
    a = synthesize_case(5, anatomy="template", sites=["iso3T"], num_cmbs=4)
    b = synthesize_case(6, anatomy="template", sites=["iso3T"], num_cmbs=4)
    assert a.meta["anatomy"] == "template"
    img, brain = a.images["T2S"], a.brain
    centre = tuple(int(round(c)) for c in np.argwhere(brain).mean(axis=0))
    core = img[tuple(slice(c - 6, c + 6) for c in centre)]
    # CSF is the brightest tissue on T2*: the ventricles make the core brighter than the median brain voxel
    assert np.percentile(core[core > 0], 95) > 1.2 * np.median(img[brain])
    assert a.props["shape"] != b.props["shape"] or not np.array_equal(a.brain, b.brain)
    assert _components(a.label)[1] == 4 and not np.any(a.label & ~brain)


def test_multi_site_world_has_the_hard_mimics():
    kinds = set()
    for seed in range(6):
        kinds |= {m["kind"] for m in synthesize_case(60 + seed, sites="all").mimics}
    assert {"flow_void", "faint_spot", "vein"} <= kinds
