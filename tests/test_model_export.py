"""``cmbunet_export_model`` / ``cmbunet_install_model``: a model travels as one verified zip and predicts the same
masks after installation; damaged, foreign or unsafe zips and overwriting an installed model are refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cmbunet import __version__
from cmbunet.evaluation.thresholds import main as thresholds_main
from cmbunet.inference import cli as predict_cli
from cmbunet.inference.cli import main as predict_main
from cmbunet.model_folder import ModelFolder
from cmbunet.model_sharing import MANIFEST, export_main, install_main
from cmbunet.plans.plans_io import load_plans, plans_hash
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities.file_io import file_sha256
from test_predict_cli import write_model

DATASET = "Dataset001_Synth"
CKPT = "fold_0/screening/checkpoint_final.pth"


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Two synthetic subjects in the VALDO layout."""
    return write_dataset(tmp_path_factory.mktemp("data") / "valdo", 2, layout="valdo", seed=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A results root holding a tiny two-fold model (random networks saved as training checkpoints)."""
    root = tmp_path_factory.mktemp("results")
    write_model(root / DATASET / "cmbunet", ("T2S",), folds=("0", "1"))
    return root


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.zip"
    assert export_main(["-d", "1", "--results-root", str(source), "-o", str(out)]) == 0
    return out


def tree(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*_prediction.nii.gz"))}


def rewrite(src: Path, dest: Path, change=None, extra: dict[str, bytes] | None = None, drop=()) -> Path:
    """Copy a zip entry by entry; ``change(name, data)`` may alter an entry's bytes, ``extra`` adds entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            if info.filename not in drop:
                data = zin.read(info.filename)
                zout.writestr(info.filename, change(info.filename, data) if change else data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dest


def refused(capsys, argv: list[str], *expect: str) -> str:
    assert install_main(argv) == 2
    err = capsys.readouterr().err
    for text in expect:
        assert text in err, err
    return err


def test_manifest_lists_every_file(source, exported):
    model = source / DATASET / "cmbunet"
    with zipfile.ZipFile(exported) as z:
        manifest = json.loads(z.read(MANIFEST))
        names = set(z.namelist())
    assert manifest["format"] == "cmbunet-model" and manifest["cmbunet_version"] == __version__
    assert manifest["dataset"] == DATASET and manifest["folds"] == ["0", "1"]
    assert manifest["plans_hash"] == plans_hash(load_plans(model / "plans.json"))
    expected = {"plans.json", "dataset.json", "inference_settings.json",
                *(f"fold_{f}/{s}/checkpoint_final.pth" for f in "01"
                  for s in ("screening", "discrimination", "segmentation"))}
    assert set(manifest["files"]) == expected and names == expected | {MANIFEST}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(model / name) and entry["size"] == (model / name).stat().st_size


def test_installed_model_predicts_the_same(source, exported, scans, tmp_path, capsys):
    fresh = tmp_path / "fresh_results"
    assert install_main([str(exported), "--results-root", str(fresh)]) == 0
    installed = fresh / DATASET / "cmbunet"
    assert ModelFolder(installed).complete_folds() == ["0", "1"]
    assert file_sha256(installed / CKPT) == (installed / f"{CKPT}.sha256").read_text().split()[0]  # checked on load
    assert not [p for p in (fresh / DATASET).iterdir() if p.name != "cmbunet"]  # no temporary folder left
    assert str(installed) in capsys.readouterr().out

    runs = {"original": ["-d", "1", "--results-root", str(source)],
            "installed": ["-d", "1", "--results-root", str(fresh)],
            "installed -m": ["-m", str(installed)]}
    results = {}
    for name, model_args in runs.items():
        out = tmp_path / name.replace(" ", "_")
        assert predict_main(["-i", str(scans), "-o", str(out), *model_args, "-npp", "0"]) == 0
        results[name] = out
    reference = masks(results["original"])
    assert len(reference) == 2 and any(m.any() for m in reference.values())
    for name in ("installed", "installed -m"):
        got = masks(results[name])
        assert got.keys() == reference.keys()
        for case, mask in reference.items():
            np.testing.assert_array_equal(got[case], mask)
        for csv in results["original"].glob("*_cmbs.csv"):
            pd.testing.assert_frame_equal(pd.read_csv(results[name] / csv.name), pd.read_csv(csv))


def test_export_of_chosen_folds_from_a_folder(source, tmp_path):
    out = tmp_path / "fold1.zip"
    assert export_main(["-m", str(source / DATASET / "cmbunet"), "-f", "1", "-o", str(out)]) == 0
    with zipfile.ZipFile(out) as z:
        manifest = json.loads(z.read(MANIFEST))
    assert manifest["folds"] == ["1"] and not [n for n in manifest["files"] if n.startswith("fold_0")]
    assert not [p for p in tmp_path.iterdir() if p.name != "fold1.zip"]  # written atomically, no temporary left


def test_export_refuses_an_untrained_fold(source, tmp_path, capsys):
    out = tmp_path / "model.zip"
    assert export_main(["-d", "1", "--results-root", str(source), "-f", "3", "-o", str(out)]) == 2
    assert "fold_3/screening/checkpoint_final.pth" in capsys.readouterr().err
    assert not out.exists()


def test_changed_checkpoint_is_refused(exported, tmp_path, capsys):
    """One byte changed in a checkpoint, the zip otherwise well-formed (its CRC recomputed)."""
    def flip(name: str, data: bytes) -> bytes:
        return data[:100] + bytes([data[100] ^ 1]) + data[101:] if name == CKPT else data

    bad = rewrite(exported, tmp_path / "bad.zip", flip)
    refused(capsys, [str(bad), "--results-root", str(tmp_path / "res")], CKPT, "sha256", "damaged")
    assert not (tmp_path / "res" / DATASET / "cmbunet").exists()
    assert not list((tmp_path / "res" / DATASET).iterdir())  # the temporary folder is gone too


def test_corrupted_zip_bytes_are_refused(exported, tmp_path, capsys):
    """One byte flipped inside the stored checkpoint data of the zip file itself."""
    with zipfile.ZipFile(exported) as z:
        info = z.getinfo(CKPT)
    data = bytearray(exported.read_bytes())
    header = info.header_offset
    name_len, extra_len = int.from_bytes(data[header + 26:header + 28], "little"), int.from_bytes(data[header + 28:header + 30], "little")
    data[header + 30 + name_len + extra_len + 200] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    refused(capsys, [str(bad), "--results-root", str(tmp_path / "res")], CKPT)
    assert not (tmp_path / "res" / DATASET / "cmbunet").exists()


@pytest.mark.parametrize("evil", ["../evil", "/tmp/cmbunet_evil", "fold_0/../../evil"])
def test_path_traversal_is_refused(exported, tmp_path, capsys, evil):
    """An entry leaving the model folder is refused even when the manifest lists it with the right checksum."""
    payload = b"not a model file\n"

    def add_to_manifest(name: str, data: bytes) -> bytes:
        if name != MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["files"][evil] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
        return json.dumps(manifest).encode()

    bad = rewrite(exported, tmp_path / "evil.zip", add_to_manifest, extra={evil: payload})
    res = tmp_path / "a" / "b" / "res"
    refused(capsys, [str(bad), "--results-root", str(res)], evil, "refusing to install")
    assert not (res / DATASET).exists() and not (tmp_path / "a" / "b" / "evil").exists()
    assert not Path("/tmp/cmbunet_evil").exists()


def test_unlisted_file_is_refused(exported, tmp_path, capsys):
    bad = rewrite(exported, tmp_path / "extra.zip", extra={"fold_0/screening/checkpoint_best.pth": b"x"})
    refused(capsys, [str(bad), "--results-root", str(tmp_path / "res")], "fold_0/screening/checkpoint_best.pth",
            "not listed in manifest.json")


def test_foreign_zips_are_refused(exported, tmp_path, capsys):
    no_manifest = rewrite(exported, tmp_path / "foreign.zip", drop=(MANIFEST,))
    refused(capsys, [str(no_manifest), "--results-root", str(tmp_path / "res")], "foreign.zip", "no manifest.json")
    other = rewrite(exported, tmp_path / "other.zip", drop=(MANIFEST,), extra={MANIFEST: b'{"format": "something"}'})
    refused(capsys, [str(other), "--results-root", str(tmp_path / "res")], "other.zip", "not a cmbunet model manifest")
    not_zip = tmp_path / "model.zip"
    not_zip.write_text("hello")
    refused(capsys, [str(not_zip), "--results-root", str(tmp_path / "res")], "model.zip", "not a zip file")
    assert not (tmp_path / "res").exists()


def test_existing_model_needs_force(exported, tmp_path, capsys):
    res = tmp_path / "res"
    assert install_main([str(exported), "--results-root", str(res)]) == 0
    installed = res / DATASET / "cmbunet"
    (installed / "fold_0" / "validation").mkdir()
    (installed / "fold_0" / "validation" / "summary.json").write_text("{}")
    before = tree(res)
    capsys.readouterr()
    refused(capsys, [str(exported), "--results-root", str(res)], str(installed), "already holds a model", "--force")
    assert tree(res) == before  # untouched
    assert install_main([str(exported), "--results-root", str(res), "--force"]) == 0
    assert not (installed / "fold_0" / "validation").exists()
    assert ModelFolder(installed).complete_folds() == ["0", "1"]
    assert [p.name for p in (res / DATASET).iterdir()] == ["cmbunet"]


def manifest_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(MANIFEST))


@pytest.fixture()
def wide_root(source, tmp_path) -> Path:
    """A results root holding the model of ``source`` as the model of plans name Wide (``cmbunet__Wide``)."""
    root = tmp_path / "wide_results"
    shutil.copytree(source / DATASET / "cmbunet", root / DATASET / "cmbunet__Wide")
    return root


def test_plans_name_travels_with_the_zip(exported, wide_root, tmp_path, capsys):
    assert manifest_of(exported)["plans_name"] == "cmbunetPlans"
    by_dataset, by_folder = tmp_path / "by_dataset.zip", tmp_path / "by_folder.zip"
    assert export_main(["-d", "1", "-p", "Wide", "--results-root", str(wide_root), "-o", str(by_dataset)]) == 0
    assert export_main(["-m", str(wide_root / DATASET / "cmbunet__Wide"), "-o", str(by_folder)]) == 0
    assert manifest_of(by_dataset)["plans_name"] == manifest_of(by_folder)["plans_name"] == "Wide"
    # without -p the zip installs under its recorded plans name; an explicit -p wins
    fresh = tmp_path / "fresh"
    assert install_main([str(by_dataset), "--results-root", str(fresh)]) == 0
    assert ModelFolder(fresh / DATASET / "cmbunet__Wide").complete_folds() == ["0", "1"]
    assert "as the model of plans name Wide" in capsys.readouterr().out
    assert install_main([str(by_dataset), "--results-root", str(fresh), "-p", "Other"]) == 0
    assert ModelFolder(fresh / DATASET / "cmbunet__Other").complete_folds() == ["0", "1"]
    assert install_main([str(by_dataset), "--results-root", str(fresh), "-p", "cmbunetPlans"]) == 0
    assert sorted(p.name for p in (fresh / DATASET).iterdir()) == ["cmbunet", "cmbunet__Other", "cmbunet__Wide"]


def test_folder_of_another_name_exports_without_a_plans_name(source, tmp_path):
    folder = tmp_path / "my_model"
    shutil.copytree(source / DATASET / "cmbunet", folder)
    out = tmp_path / "model.zip"
    assert export_main(["-m", str(folder), "-n", DATASET, "-o", str(out)]) == 0
    assert "plans_name" not in manifest_of(out)
    assert export_main(["-m", str(folder), "-n", DATASET, "-p", "Mine", "-o", str(out)]) == 0
    assert manifest_of(out)["plans_name"] == "Mine"


def set_plans_name(name: str, data: bytes, value: object) -> bytes:
    """Change (None: remove) the plans name of the manifest; the checksums cover the model files only."""
    if name != MANIFEST:
        return data
    manifest = json.loads(data)
    manifest.pop("plans_name", None)
    if value is not None:
        manifest["plans_name"] = value
    return json.dumps(manifest).encode()


def test_zip_without_a_plans_name_installs_as_the_default(wide_root, tmp_path, capsys):
    wide = tmp_path / "wide.zip"
    assert export_main(["-d", "1", "-p", "Wide", "--results-root", str(wide_root), "-o", str(wide)]) == 0
    older = rewrite(wide, tmp_path / "older.zip", lambda n, d: set_plans_name(n, d, None))
    fresh = tmp_path / "fresh"
    assert install_main([str(older), "--results-root", str(fresh)]) == 0
    assert [p.name for p in (fresh / DATASET).iterdir()] == ["cmbunet"]
    assert install_main([str(older), "--results-root", str(fresh), "-p", "Wide"]) == 0
    assert (fresh / DATASET / "cmbunet__Wide" / "plans.json").is_file()
    for bad in ("../escape", "a__b", 7):
        evil = rewrite(wide, tmp_path / "evil.zip", lambda n, d: set_plans_name(n, d, bad))
        refused(capsys, [str(evil), "--results-root", str(tmp_path / "other")], "plans_name", "not a usable plans name")
        assert not (tmp_path / "other").exists()


def test_predict_refuses_plans_name_with_a_model_folder(source, wide_root, scans, tmp_path, capsys):
    """-p picks a model inside a results folder: with -m naming a model folder it cannot apply and is refused,
    instead of being ignored; with -m naming the results folder it picks the model of that plans name."""
    out = tmp_path / "out"
    assert predict_main(["-i", str(scans), "-o", str(out), "-m", str(source / DATASET / "cmbunet"),
                         "-p", "Wide"]) == 2
    err = capsys.readouterr().err
    assert "the model of plans name cmbunetPlans" in err and "-p Wide cannot apply" in err
    assert "-p and -m naming a model folder conflict" in err and "Drop -p" in err
    assert not out.exists()
    build = predict_cli.build_parser().parse_args
    wide = wide_root / DATASET / "cmbunet__Wide"
    assert predict_cli.model_folder(build(["-i", "x", "-o", "y", "-m", str(wide_root / DATASET), "-p", "Wide"])) == wide
    assert predict_cli.model_folder(build(["-i", "x", "-o", "y", "-m", str(wide), "-p", "Wide"])) == wide
    assert predict_cli.model_folder(build(["-i", "x", "-o", "y", "-m", str(wide)])) == wide
    default = source / DATASET / "cmbunet"
    assert predict_cli.model_folder(build(["-i", "x", "-o", "y", "-m", str(source / DATASET)])) == default


def test_a_model_of_another_plans_name_is_pointed_at(wide_root, scans, tmp_path, capsys):
    """Asked for the default model of a dataset that only has the model of plans name Wide, prediction, export and
    the threshold search name the -p that finds it."""
    out = tmp_path / "out"
    assert predict_main(["-i", str(scans), "-o", str(out), "-d", "1", "--results-root", str(wide_root)]) == 2
    err = capsys.readouterr().err
    assert "model folder does not exist" in err and "plans name(s) Wide: pass -p NAME" in err
    assert not out.exists()
    assert export_main(["-d", "1", "--results-root", str(wide_root), "-o", str(tmp_path / "m.zip")]) == 2
    assert "plans name(s) Wide: pass -p NAME" in capsys.readouterr().err
    assert thresholds_main(["-d", "1", "--results-root", str(wide_root), "--dry-run"]) == 2
    assert "plans name(s) Wide: pass -p NAME" in capsys.readouterr().err
    assert predict_main(["-i", str(scans), "-o", str(out), "-m", str(tmp_path / "nope")]) == 2
    assert "pass -p" not in capsys.readouterr().err
