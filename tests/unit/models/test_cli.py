"""`mammo-scp models ...`: train on a DICOM folder, refuse to clobber, resume exactly, export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from mammo_scp.models.store import ModelStoreError, load_model
from mammo_scp.training.cli import add_models_parser, repo_relative
from mammo_scp.training.recipe import load_init_weights, load_npz
from tests.support.mg import Patient, add_mass, breast_phantom, make_mg


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mammo-scp")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    for woman in range(4):
        study = generate_uid()
        for lat in ("R", "L"):
            pixels = breast_phantom(256, 208, lat, seed=10 * woman + (lat == "L"))
            if lat == "R":
                pixels = add_mass(pixels, (128, 50), 14)
            ds = make_mg(lat, "MLO", study_uid=study, pixels=pixels,
                         patient=Patient(patient_id=f"W{woman}"))
            ds.save_as(folder / f"w{woman}{lat}.dcm", enforce_file_format=True)
            if lat == "R":
                (folder / f"w{woman}{lat}.json").write_text(json.dumps(
                    {"masses": [{"x": 50.5, "y": 128.5, "radius": 14, "severity": "B"}]}))
    return folder


def test_parser_has_the_commands():
    args = _parser().parse_args(["models", "train", "frcnn", "--data", "d", "--out", "o",
                                 "--epochs", "3", "--seed", "7", "--resume"])
    assert (args.kind, args.epochs, args.seed, args.resume) == ("frcnn", 3, 7, True)
    assert callable(args.func)
    args = _parser().parse_args(["models", "evaluate", "--data", "d", "--models", "m",
                                 "--out", "o"])
    assert callable(args.func)


def test_train_refuses_what_cannot_go_together(dicom_folder, tmp_path, capsys):
    npz = tmp_path / "resnet.npz"
    np.savez(npz, x=np.zeros(1))
    detector = tmp_path / "frcnn"
    detector.mkdir()
    out = str(tmp_path / "run")
    assert _run("models", "train", "unet", "--data", str(dicom_folder), "--out", out,
                "--backbone", str(npz), "--encoder", str(detector)) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert _run("models", "train", "unet", "--data", str(dicom_folder), "--out", out,
                "--backbone", str(tmp_path / "absent.npz")) == 2
    assert "no backbone file" in capsys.readouterr().err
    assert _run("models", "train", "frcnn", "--data", str(dicom_folder), "--out", out,
                "--digital-look", "1.5") == 2
    assert "--digital-look must lie between 0 and 1" in capsys.readouterr().err
    assert not Path(out).exists()


def test_train_resume_is_exact_and_export_loads(dicom_folder, tmp_path):
    common = ["--data", str(dicom_folder), "--seed", "3", "--width", "4", "--batch", "4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run("models", "train", "unet", "--out", str(straight), "--epochs", "2", *common) == 0
    assert _run("models", "train", "unet", "--out", str(split), "--epochs", "2", "--stop-after",
                "1", *common) == 0
    # an existing checkpoint is not overwritten without --resume
    assert _run("models", "train", "unet", "--out", str(split), "--epochs", "2", *common) == 2
    assert _run("models", "train", "unet", "--out", str(split), "--epochs", "2", "--resume",
                *common) == 0
    a, b = load_npz(straight / "last.npz"), load_npz(split / "last.npz")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    state = json.loads((split / "checkpoint" / "state.json").read_text())["state"]
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert _run("models", "export", "unet", "--run", str(split), "--models",
                str(tmp_path / "models"), "--version", "0.0.1") == 0
    bundle = load_model(tmp_path / "models", "unet")
    split_info = bundle.manifest["training"]["split"]
    assert split_info["by"] == "woman"
    assert set(split_info["train_women"]).isdisjoint(split_info["val_women"])
    # the run was given absolute paths; the manifest records them relative to the repository
    recorded = bundle.manifest["training"]["config"]
    assert not Path(recorded["data"]).is_absolute() and not Path(recorded["out"]).is_absolute()
    assert f"--data {dicom_folder}" not in bundle.manifest["training"]["command"]


def test_paths_are_recorded_relative_to_the_repository(tmp_path):
    root = tmp_path / "work" / "main"
    assert repo_relative(str(tmp_path / "work" / "shared" / "data"), root) == "../shared/data"
    assert repo_relative(str(root / "runs" / "in1"), root) == "runs/in1"
    assert repo_relative("runs/in1", root) == "runs/in1"



def test_the_weight_average_is_what_is_saved_and_it_resumes_exactly(dicom_folder, tmp_path):
    common = ["--data", str(dicom_folder), "--seed", "4", "--width", "4", "--batch", "4",
              "--ema", "0.9", "--epochs", "2", "--scale", "0.7", "1.3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run("models", "train", "unet", "--out", str(straight), *common) == 0
    assert _run("models", "train", "unet", "--out", str(split), "--stop-after", "1",
                *common) == 0
    assert _run("models", "train", "unet", "--out", str(split), "--resume", *common) == 0
    a, b = load_npz(straight / "last.npz"), load_npz(split / "last.npz")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # last.npz holds the average, not the raw weights the optimiser left
    average = load_npz(straight / "checkpoint" / "ema.npz")
    raw = load_npz(straight / "checkpoint" / "variables.npz")
    kernel = a[0]
    assert any(np.array_equal(kernel, x) for x in average)
    assert not any(x.shape == kernel.shape and np.array_equal(kernel, x) for x in raw)
    assert _run("models", "export", "unet", "--run", str(split), "--models",
                str(tmp_path / "models"), "--version", "0.0.1") == 0
    command = load_model(tmp_path / "models", "unet").manifest["training"]["command"]
    assert "--ema 0.9" in command and "--scale 0.7 1.3" in command


def _two_runs(dicom_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two one-epoch U-Net runs of one architecture, seeds 1 and 2."""
    common = ["--data", str(dicom_folder), "--width", "4", "--batch", "4", "--epochs", "1"]
    runs = tmp_path / "first", tmp_path / "second"
    for seed, run in enumerate(runs, start=1):
        assert _run("models", "train", "unet", "--out", str(run), "--seed", str(seed),
                    *common) == 0
    return runs


def test_runs_ship_as_one_ensemble_only_when_they_share_architecture_and_split(
        dicom_folder, tmp_path, capsys):
    first, second = _two_runs(dicom_folder, tmp_path)
    models = tmp_path / "models"
    assert _run("models", "export", "unet", "--run", str(first), "--run", str(second),
                "--models", str(models), "--version", "0.1.0") == 0
    bundle = load_model(models, "unet")
    assert len(bundle.members) == 2
    for member, run in zip(bundle.members, (first, second), strict=True):
        assert all(np.allclose(x, y, atol=1e-2, rtol=1e-2)
                   for x, y in zip(member, load_npz(run / "last.npz"), strict=True))
    training = bundle.manifest["training"]
    assert [m["config"]["seed"] for m in training["members"]] == [1, 2]
    assert training["split"]["val_images"]
    # a run of another width cannot join: the error names the difference
    config = json.loads((second / "train_config.json").read_text())
    config["model"]["width"] = 8
    (second / "train_config.json").write_text(json.dumps(config))
    assert _run("models", "export", "unet", "--run", str(first), "--run", str(second),
                "--models", str(models), "--version", "0.2.0") == 2
    assert "differs from" in capsys.readouterr().err and not (models / "unet" / "0.2.0").exists()


def test_a_shipped_model_joins_an_ensemble_as_it_was_shipped(dicom_folder, tmp_path):
    first, second = _two_runs(dicom_folder, tmp_path)
    models = tmp_path / "models"
    assert _run("models", "export", "unet", "--run", str(first), "--models", str(models),
                "--version", "1.0.0") == 0
    shipped = load_model(models, "unet", "1.0.0")
    assert _run("models", "export", "unet", "--run", str(models / "unet" / "1.0.0"),
                "--run", str(second), "--models", str(models), "--version", "1.1.0") == 0
    bundle = load_model(models, "unet", "1.1.0")
    assert len(bundle.members) == 2
    # float16 to float16: the shipped member is carried over bit for bit
    assert all(np.array_equal(x, y)
               for x, y in zip(bundle.members[0], shipped.members[0], strict=True))
    records = bundle.manifest["training"]["members"]
    assert records[0]["shipped_as"] == "unet 1.0.0"
    assert records[0]["sha256"] == shipped.manifest["weights"]["sha256"]
    assert [r["config"]["seed"] for r in records] == [1, 2]
    # an ensemble shipped before joins with all its members
    assert _run("models", "export", "unet", "--run", str(models / "unet" / "1.1.0"),
                "--run", str(first), "--models", str(models), "--version", "1.2.0") == 0
    assert len(load_model(models, "unet", "1.2.0").members) == 3


def test_training_starts_from_a_shipped_model_folder(dicom_folder, tmp_path):
    common = ["--data", str(dicom_folder), "--seed", "5", "--width", "4", "--batch", "4"]
    first = tmp_path / "first"
    assert _run("models", "train", "unet", "--out", str(first), "--epochs", "1", *common) == 0
    assert _run("models", "export", "unet", "--run", str(first), "--models",
                str(tmp_path / "models"), "--version", "0.0.1") == 0
    shipped = tmp_path / "models" / "unet" / "0.0.1"
    start = load_init_weights(shipped)  # float16 on disk, float32 here, as the node loads it
    assert all(np.array_equal(x, y) for x, y in zip(
        start, load_model(tmp_path / "models", "unet").weights, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(
        start, load_npz(first / "last.npz"), strict=True))  # float16 rounding: not the .npz
    again = tmp_path / "again"
    assert _run("models", "train", "unet", "--out", str(again), "--epochs", "1",
                "--init", str(shipped), *common) == 0
    assert _run("models", "export", "unet", "--run", str(again), "--models",
                str(tmp_path / "models"), "--version", "0.0.2") == 0
    record = load_model(tmp_path / "models", "unet", "0.0.2").manifest["training"]
    assert record["initialised_from"]["model"] == "unet 0.0.1"
    assert record["initialised_from"]["training"]["epochs_run"] == 1
    assert record["command"].endswith(f"--init {repo_relative(str(shipped))}")
    # a corrupt folder is refused, naming the file
    (shipped / "weights.npz").write_bytes(b"not weights")
    with pytest.raises(ModelStoreError, match="weights.npz"):
        load_init_weights(shipped)


def test_a_keras_fit_run_trains_from_a_pack_and_exports_with_its_own_command(
        dicom_folder, tmp_path):
    from mammo_scp.training import fit_unet

    pack = tmp_path / "pack.npz"
    assert fit_unet.main(["pack", "--data", str(dicom_folder), "--spacing", "0.8",
                          "--out", str(pack)]) == 0
    run = tmp_path / "fit"
    argv = ["fit", "--pack", str(pack), "--out", str(run), "--epochs", "2", "--width", "4",
            "--depth", "2", "--batch", "2", "--train-shape", "64", "64", "--ema", "0.9",
            "--workers", "1", "--seed", "3"]
    assert fit_unet.main(argv) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())["state"]
    assert state["epoch"] == 2 and all(np.isfinite(h["loss"]) for h in state["history"])
    models = tmp_path / "models"
    assert _run("models", "export", "unet", "--run", str(run), "--models", str(models),
                "--version", "0.3.0") == 0
    bundle = load_model(models, "unet")
    assert bundle.manifest["architecture"]["config"]["depth"] == 2
    assert bundle.manifest["training"]["command"].startswith(
        "python -m mammo_scp.training.fit_unet fit --pack")
    assert all(np.allclose(x, y, atol=1e-2, rtol=1e-2)
               for x, y in zip(bundle.weights, load_npz(run / "last.npz"), strict=True))
    assert bundle.manifest["architecture"]["framework"] == "keras 3 / tensorflow"

    # a second stage from the first one's weights, with a wider zoom; a run fit on JAX says so
    stage2 = tmp_path / "fit2"
    assert fit_unet.main([*argv[:4], str(stage2), "--epochs", "1", *argv[7:],
                          "--init", str(run / "last.npz"), "--scale", "0.6", "1.6"]) == 0
    config = json.loads((stage2 / "train_config.json").read_text())
    assert config["train"]["init_weights"] == str(run / "last.npz")
    assert config["train"]["scale"] == [0.6, 1.6]
    config["train"]["backend"] = "jax"
    (stage2 / "train_config.json").write_text(json.dumps(config))
    assert _run("models", "export", "unet", "--run", str(stage2), "--models", str(models),
                "--version", "0.4.0") == 0
    second = load_model(models, "unet", "0.4.0")
    assert second.manifest["architecture"]["framework"] == (
        "keras 3 / tensorflow (trained on keras 3 / jax)")
    assert second.manifest["training"]["initialised_from"]["config"]["out"] == str(run)


def test_hard_negatives_are_mined_on_training_women_and_steer_the_detector(
        dicom_folder, tmp_path, capsys):
    from mammo_scp.training.data import load_records, split_by_woman

    common = ["--data", str(dicom_folder), "--seed", "2", "--width", "4", "--batch", "4",
              "--epochs", "1", "--crop", "96", "96"]
    models = tmp_path / "models"
    assert _run("models", "train", "frcnn", "--out", str(tmp_path / "a"), *common) == 0
    assert _run("models", "export", "frcnn", "--run", str(tmp_path / "a"), "--models",
                str(models), "--version", "0.0.1") == 0
    mined_path = tmp_path / "hard.json"
    assert _run("models", "mine-negatives", "--data", str(dicom_folder), "--model",
                str(models / "frcnn" / "0.0.1"), "--out", str(mined_path),
                "--min-score", "0", "--per-image", "3") == 0
    mined = json.loads(mined_path.read_text())
    assert mined["detector"] == "frcnn 0.0.1" and mined["spacing_mm"] == 0.8
    records = load_records(dicom_folder)
    train, held = split_by_woman(records, 0.25, 0)
    # an untrained detector's findings: every one scores >= 0, so every training image has some
    assert set(mined["images"]) == {r.key for r in train}
    by_key = {r.key: r for r in records}
    for key, boxes in mined["images"].items():
        assert 1 <= len(boxes) <= 3
        assert [b[4] for b in boxes] == sorted((b[4] for b in boxes), reverse=True)
        assert by_key[key].woman not in {r.woman for r in held}

    hard = ["--hard-negatives", str(mined_path), "--hard-negative-prob", "0.7"]
    assert _run("models", "train", "frcnn", "--out", str(tmp_path / "b"), *common, *hard) == 0
    assert _run("models", "export", "frcnn", "--run", str(tmp_path / "b"), "--models",
                str(models), "--version", "0.0.2") == 0
    record = load_model(models, "frcnn", "0.0.2").manifest["training"]
    mined_rel = repo_relative(str(mined_path))
    assert record["command"].endswith(f"--hard-negatives {mined_rel} --hard-negative-prob 0.7")
    assert record["hard_negatives"]["mined_by"] == "frcnn 0.0.1"
    assert record["hard_negatives"]["boxes"] == sum(map(len, mined["images"].values()))
    # mined at another spacing, for the U-Net, or missing: refused
    with pytest.raises(ValueError, match="mined at 0.8 mm"):
        _run("models", "train", "frcnn", "--out", str(tmp_path / "c"), *common, *hard,
             "--spacing", "0.4")
    assert _run("models", "train", "unet", "--out", str(tmp_path / "d"), *common, *hard) == 2
    assert _run("models", "train", "frcnn", "--out", str(tmp_path / "e"), *common,
                "--hard-negatives", str(tmp_path / "none.json")) == 2
    assert _run("models", "train", "frcnn", "--out", str(tmp_path / "f"), *common,
                "--hard-negatives", str(mined_path), "--hard-negative-prob", "1.5") == 2
    assert _run("models", "mine-negatives", "--data", str(dicom_folder), "--model",
                str(models / "frcnn" / "9.9.9"), "--out", str(tmp_path / "x.json")) == 2
    err = capsys.readouterr().err
    assert "frcnn) only" in err and "no hard-negative file" in err and "9.9.9" in err
    assert "between 0 and 1, got 1.5" in err


def test_compare_runs_both_folders_on_the_same_women(mias_dir, models_dir, tmp_path, capsys):
    """The shipped models against themselves on two held-out women (links to the real
    mini-MIAS images, the shared folder's truth): equal FROCs and no difference in any round."""
    data = tmp_path / "mias"
    data.mkdir()
    keep = {"mdb005", "mdb006", "mdb069", "mdb070"}
    lines = (mias_dir / "annotations.csv").read_text().splitlines()
    (data / "annotations.csv").write_text("\n".join(
        [lines[0]] + [line for line in lines[1:] if line.split(",")[0] in keep]) + "\n")
    for key in keep:
        (data / f"{key}.png").symlink_to(mias_dir / f"{key}.png")
    assert _run("models", "compare", "--data", str(data), "--models", str(models_dir)) == 2
    assert "give --models twice" in capsys.readouterr().err
    out = tmp_path / "compare.json"
    assert _run("models", "compare", "--data", str(data), "--models", str(models_dir),
                "--models", str(models_dir), "--rounds", "50", "--out", str(out)) == 0
    figures = json.loads(out.read_text())
    assert figures["scope"] == "validation women of the manifest split"
    first, second = figures["froc"]
    assert first == second and first["4.0"] > 0  # the shipped detector finds those masses
    for rate in ("0.25", "1.0"):
        assert figures["paired_bootstrap"]["rates"][rate]["difference"] == 0.0
        assert figures["paired_bootstrap"]["rates"][rate]["share_second_higher"] == 0.0
    assert figures["paired_bootstrap"]["women"] == 2


def test_a_network_learns_beside_a_teachers_maps_and_only_from_a_fitting_teacher(
        dicom_folder, tmp_path, capsys):
    common = ["--data", str(dicom_folder), "--seed", "4", "--width", "4", "--batch", "4",
              "--epochs", "1"]
    models = tmp_path / "models"
    assert _run("models", "train", "unet", "--out", str(tmp_path / "t"), *common) == 0
    assert _run("models", "export", "unet", "--run", str(tmp_path / "t"), "--models",
                str(models), "--version", "0.0.1", "--threshold", "tta_vflip=1") == 0
    teacher = models / "unet" / "0.0.1"
    plain, silent, taught = (tmp_path / n for n in ("plain", "silent", "taught"))
    assert _run("models", "train", "unet", "--out", str(plain), *common) == 0
    assert _run("models", "train", "unet", "--out", str(silent), "--teacher", str(teacher),
                "--teacher-weight", "0", *common) == 0
    assert _run("models", "train", "unet", "--out", str(taught), "--teacher", str(teacher),
                *common) == 0
    # the maps change nothing else (same views, same random numbers); the term changes the
    # weights
    same = zip(load_npz(plain / "last.npz"), load_npz(silent / "last.npz"), strict=True)
    assert all(np.array_equal(a, b) for a, b in same)
    moved = zip(load_npz(plain / "last.npz"), load_npz(taught / "last.npz"), strict=True)
    assert not all(np.array_equal(a, b) for a, b in moved)
    assert _run("models", "export", "unet", "--run", str(taught), "--models", str(models),
                "--version", "0.0.2") == 0
    record = load_model(models, "unet", "0.0.2").manifest["training"]
    assert f"--teacher {repo_relative(str(teacher))} --teacher-weight 1.0" in record["command"]
    assert record["teacher"]["model"] == "unet 0.0.1"
    assert record["teacher"]["sha256"] == load_model(models, "unet", "0.0.1").manifest[
        "weights"]["sha256"]
    # refused: a detector, another spacing, a folder that is no model, the digital look
    out = str(tmp_path / "refused")
    assert _run("models", "train", "frcnn", "--out", out, "--teacher", str(teacher),
                *common) == 2
    assert "trains a U-Net" in capsys.readouterr().err
    assert _run("models", "train", "unet", "--out", out, "--teacher", str(teacher),
                "--spacing", "0.4", *common) == 2
    assert "works at 0.8 mm, this run at 0.4 mm" in capsys.readouterr().err
    assert _run("models", "train", "unet", "--out", out, "--teacher", str(tmp_path),
                *common) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert _run("models", "train", "unet", "--out", out, "--teacher", str(teacher),
                "--digital-look", "0.5", *common) == 2
    assert not Path(out).exists()


def test_frozen_batch_norms_keep_what_they_started_with(dicom_folder, tmp_path, capsys):
    import keras

    from mammo_scp.models.unet import UNetConfig, build_unet

    common = ["--data", str(dicom_folder), "--seed", "6", "--width", "4", "--batch", "4",
              "--epochs", "1"]
    first, frozen = tmp_path / "first", tmp_path / "frozen"
    assert _run("models", "train", "unet", "--out", str(first), *common) == 0
    assert _run("models", "train", "unet", "--out", str(frozen), "--init",
                str(first / "last.npz"), "--freeze-batch-norm", *common) == 0
    config = UNetConfig.from_dict(json.loads((first / "train_config.json").read_text())["model"])
    before, after = build_unet(config), build_unet(config)
    before.set_weights(load_npz(first / "last.npz"))
    after.set_weights(load_npz(frozen / "last.npz"))
    norms = [(a, b) for a, b in zip(before.layers, after.layers, strict=True)
             if isinstance(a, keras.layers.BatchNormalization)]
    assert norms and all(np.array_equal(x, y) for a, b in norms
                         for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    # the rest trained
    assert not all(np.array_equal(x, y) for x, y in zip(
        before.get_weights(), after.get_weights(), strict=True))
    assert _run("models", "train", "frcnn", "--out", str(tmp_path / "no"),
                "--freeze-batch-norm", *common) == 2
    assert "--freeze-batch-norm is for the U-Net" in capsys.readouterr().err
