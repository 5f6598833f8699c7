"""`microau-sweep train` and `predict`, the Python API and the MLflow model (docs/predict.md).

One model is trained per module on the synthetic CASME II fixture (4 subjects x 6 samples) with the tiny
random-init backbone; the held-back clip comes from a synthetic subject generated with another seed, so
neither its face nor its clip was trained on.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main

from support.data import CASME2_AUS, TEST_PREPROCESS, fake_prepared

HELD_SEED = 9  # 1 subject x 8 samples of this seed: none of it is in the training fixture (seed 0)
HELD_AU = 17  # the generator's most separable AU (docs/datasets.md: region-motion AUC 1.00)
REGISTERED = "microau-test"


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


@pytest.fixture(scope="module")
def sweep(synth_casme2, tmp_path_factory, mlflow_db_template):
    folder = tmp_path_factory.mktemp("predict")
    (folder / "wd").mkdir()
    shutil.copy(mlflow_db_template, folder / "wd" / "mlflow.db")  # migrated already: saves ~10 s
    doc = {"name": "predicttest", "workdir": str(folder / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(synth_casme2)}},
           "preprocessing": TEST_PREPROCESS,
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1},
           "training": {"epochs": 20, "lr_step_epoch": 15, "batch_size": 8, "threads": 1, "device": "cpu"},
           "variants": {"full": {}, "lsi_only": {"model.gsd": False}}}
    path = folder / "predicttest.yaml"
    path.write_text(yaml.safe_dump(doc))
    return SimpleNamespace(path=path, uri=f"sqlite:///{folder / 'wd' / 'mlflow.db'}", workdir=folder / "wd")


@pytest.fixture(scope="module")
def trained(sweep):
    res = cli("train", sweep.path, "--point", 0, "--register", REGISTERED, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """(clip folder, onset, apex, AU set) of every clip of a subject the model never saw."""
    from preprocessing.synth import generate

    root = generate(tmp_path_factory.mktemp("held") / "casme2", "casme2", subjects=1, per_subject=8,
                    seed=HELD_SEED)
    truth = json.loads((root / "synth.json").read_text())["samples"]
    return root, [(root / "CASME2_RAW_selected" / t["sample"], t["onset"], t["apex"], sorted(map(int, t["aus"])))
                  for t in truth]


def one_au_clip(held, au):
    return next(c for c in held[1] if c[3] == [au])


def frame(folder, n):
    return folder / f"img{n}.jpg"


@pytest.mark.slow
def test_train_stores_the_model_and_what_it_was_trained_on(trained, sweep):
    from mlflow import MlflowClient

    from model.inference import META_FILE, WEIGHTS_FILE

    path = Path(trained["model"])
    assert trained["trained"] and path.parent == sweep.workdir / "models" and path.name == trained["key"]
    assert {p.name for p in path.iterdir()} == {META_FILE, WEIGHTS_FILE}
    info = json.loads((path / META_FILE).read_text())["info"]
    t = info["trained_on"]
    assert t["subjects"] == ["sub01", "sub02", "sub03", "sub04"] and t["samples"] == 24 and t["dataset"] == "casme2"
    assert (info["point"], info["point_label"], info["seed"]) == (0, "full", 1)
    assert info["config"]["training"]["epochs"] == 20 and info["preprocessing"]["flow"] == "dis"
    assert "no subject held out" in info["evaluation"]
    run = MlflowClient(sweep.uri).get_run(trained["mlflow"]["run_id"])
    assert run.data.tags["microau.model"] == trained["key"] and run.data.tags["microau.kind"] == "model"
    assert run.data.params["training.epochs"] == "20"


@pytest.mark.slow
def test_held_back_clip_of_a_known_au_gives_that_au_the_highest_probability(trained, held):
    folder, onset, apex, _ = one_au_clip(held, HELD_AU)
    res = cli("predict", trained["model"], "--clip", folder, "--onset", onset, "--apex", apex, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (p,) = doc["predictions"]
    assert max(p["probs"], key=p["probs"].get) == f"AU{HELD_AU}", p["probs"]
    assert p["preds"][f"AU{HELD_AU}"] == 1 and sum(p["preds"].values()) <= 2
    assert p["mer_pred"] in p["mer_scores"] and set(p["mer_scores"]) == {"positive", "negative", "surprise"}
    t = doc["trained_on"]
    assert t["subjects"] == ["sub01", "sub02", "sub03", "sub04"] and (t["point"], t["seed"]) == (0, 1)
    assert "no subject held out" in t["evaluation"]


@pytest.mark.slow
def test_predict_prints_what_the_model_was_trained_on(trained, held):
    folder, onset, apex, _ = one_au_clip(held, HELD_AU)
    res = cli("predict", trained["model"], "--onset", frame(folder, onset), "--apex", frame(folder, apex))
    assert res.exit_code == 0, res.output
    assert "trained on all 4 subjects (24 samples) of casme2" in res.stdout and "seed 1" in res.stdout
    assert "evaluation: none: trained on every subject" in res.stdout
    assert f"AU{HELD_AU}" in res.stdout and "MER (zero-shot, Eq. 13)" in res.stdout
    assert "two frames give it only these two" in res.stderr  # Eulerian magnification reads the whole clip


@pytest.mark.slow
def test_rerun_of_train_trains_nothing(trained, sweep, monkeypatch):
    import model.inference

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(model.inference, "fit", no_training)
    weights = Path(trained["model"]) / "weights.safetensors"
    before = weights.stat().st_mtime_ns
    res = cli("train", sweep.path, "--point", 0, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["trained"] is False and doc["model"] == trained["model"] and weights.stat().st_mtime_ns == before
    assert doc["mlflow"]["logged"] is False and doc["mlflow"]["model_uri"] == trained["mlflow"]["model_uri"]
    res = cli("train", sweep.path, "--point", 0)
    assert "already stored: trained nothing" in res.stdout


@pytest.mark.slow
def test_mlflow_model_gives_the_numbers_of_predict(trained, held, sweep):
    import mlflow

    from orchestrator.api import load_model, predict
    from orchestrator.tracking.client import fluent_tracking_uri

    clips = held[1][:3]
    pairs = [(str(frame(f, o)), str(frame(f, a))) for f, o, a, _ in clips]
    with fluent_tracking_uri(sweep.uri):
        pyfunc = mlflow.pyfunc.load_model(trained["mlflow"]["model_uri"])
    out = pyfunc.predict(pd.DataFrame({"onset": [p[0] for p in pairs], "apex": [p[1] for p in pairs]}))
    assert len(out) == 3 and list(out.columns[:3]) == ["id", "onset", "apex"]
    local = load_model(trained["model"])
    registered = load_model(f"models:/{REGISTERED}/1", tracking_uri=sweep.uri)
    for i, (onset, apex) in enumerate(pairs):
        res = cli("predict", trained["model"], "--onset", onset, "--apex", apex, "--json")
        (p,) = json.loads(res.stdout)["predictions"]
        for q in (predict(local, onset, apex), predict(registered, onset, apex)):
            assert q["probs"] == p["probs"] and q["mer_scores"] == p["mer_scores"]
        for au, prob in p["probs"].items():
            assert out.loc[i, f"prob_{au}"] == pytest.approx(prob, rel=1e-5, abs=1e-7)
            assert out.loc[i, f"pred_{au}"] == p["preds"][au]
        assert out.loc[i, "mer_pred"] == p["mer_pred"]
    assert registered.trained_on()["model"] == trained["key"]
    res = cli("predict", f"models:/{REGISTERED}/1", "--tracking-uri", sweep.uri, "--onset", pairs[0][0],
              "--apex", pairs[0][1], "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["predictions"][0]["probs"] == predict(local, *pairs[0])["probs"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["code_file", "code_folder", "loader"])
def test_an_mlflow_model_that_would_run_other_code_is_refused_before_it_runs(trained, sweep, tmp_path, change):
    """MLflow runs a models-from-code file on load: a copy of the logged model whose code file, code folders
    or loader are not this tool's own is refused naming why, and its code never runs (docs/security.md)."""
    import mlflow

    from model.inference import ModelPackageError
    from orchestrator.api import load_model
    from orchestrator.tracking.client import fluent_tracking_uri

    with fluent_tracking_uri(sweep.uri):
        folder = Path(mlflow.artifacts.download_artifacts(trained["mlflow"]["model_uri"], dst_path=str(tmp_path)))
    assert load_model(folder, device="cpu").trained_on()["model"] == trained["key"]  # as logged: accepted
    ran = tmp_path / "ran"
    payload = f"open({str(ran)!r}, 'w').write('code of the model ran')\n"
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavour = mlmodel["flavors"]["python_function"]
    if change == "code_file":
        code = folder / Path(flavour["model_code_path"]).name
        code.write_text(payload + code.read_text())
    elif change == "code_folder":
        (folder / "code").mkdir()
        (folder / "code" / "evil.py").write_text(payload)
        flavour["code"] = "code"
    else:
        (folder / "evil_loader.py").write_text(payload)
        flavour["loader_module"] = "evil_loader"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelPackageError, match="refused: .*MLflow would run that code"):
        load_model(folder, device="cpu")
    assert not ran.exists()


@pytest.mark.slow
def test_train_without_mlflow_warns_and_keeps_the_model(trained, sweep):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    res = cli("train", sweep.path, "--point", 0, "--tracking-uri", uri, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == trained["model"] and doc["mlflow"]["error"]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("warning")]
    assert f"warning: MLflow ({uri}) unavailable" in line and f"The model is stored at {trained['model']}" in line


@pytest.mark.slow
def test_api_takes_frames_as_arrays(trained, held):
    from orchestrator.api import load_model, predict
    from preprocessing.annotations import read_image

    folder, onset, apex, _ = one_au_clip(held, HELD_AU)
    model = load_model(trained["model"], device="cpu")
    by_file = predict(model, frame(folder, onset), frame(folder, apex))
    by_array = predict(model, read_image(frame(folder, onset)), read_image(frame(folder, apex)))
    assert by_array["probs"] == by_file["probs"] and by_array["trained_on"]["samples"] == 24


@pytest.mark.slow
def test_sheet_and_root_predict_a_whole_folder_to_csv(trained, held, tmp_path):
    root, clips = held
    out = tmp_path / "preds.csv"
    res = cli("predict", trained["model"], "--sheet", root / "CASME2-coding-20140508.xlsx", "--root", root,
              "--out", out)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert len(df) == len(clips) == 8 and list(df["onset_frame"]) == [c[1] for c in clips]
    probs = df[[f"prob_AU{a}" for a in CASME2_AUS]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    assert (df[[f"pred_AU{a}" for a in CASME2_AUS]].to_numpy() == (probs > 0.5)).all()
    assert set(df["mer_pred"]) <= {"positive", "negative", "surprise"} and "sheet_aus" in df
    assert "8 clips predicted" in res.stderr and "trained on all 4 subjects" in res.stderr


@pytest.mark.slow
def test_faceless_apex_frame_fails_naming_the_file(trained, held, tmp_path):
    import cv2

    folder, onset, _, _ = one_au_clip(held, HELD_AU)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 90, np.uint8))
    res = cli("predict", trained["model"], "--onset", frame(folder, onset), "--apex", blank)
    assert res.exit_code == 1 and res.stderr.splitlines()[-1].startswith("Error: ")
    assert "no face found" in res.output and str(blank) in res.output


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "unreadable", "frame_number"])
def test_bad_frames_are_named(trained, held, tmp_path, case):
    folder, onset, apex, _ = one_au_clip(held, HELD_AU)
    if case == "missing":
        args, needle = ["--onset", tmp_path / "nope.jpg", "--apex", frame(folder, apex)], \
            f"onset frame file {tmp_path / 'nope.jpg'} does not exist"
    elif case == "unreadable":
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image at all")
        args, needle = ["--onset", frame(folder, onset), "--apex", bad], f"frame file {bad} cannot be read as an image"
    else:
        args, needle = ["--clip", folder, "--onset", onset, "--apex", 9999], f"missing in {folder}"
    res = cli("predict", trained["model"], *args)
    assert res.exit_code == 1 and needle in res.output, res.output


@pytest.mark.slow
def test_missing_or_other_backbone_weights_are_named(trained, held, tmp_path):
    """A package whose backbone file is not on this machine gets the BackboneError of `fold`; a file with
    other weights than the model was trained with is refused (the stored probe does not match)."""
    import torch

    from model import backbone

    folder, onset, apex, _ = one_au_clip(held, HELD_AU)

    def package_with(pretrained):
        pkg = tmp_path / f"pkg-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained["model"], pkg)
        meta = json.loads((pkg / "model.json").read_text())
        meta["model"]["pretrained"] = meta["backbone"]["pretrained"] = str(pretrained)
        (pkg / "model.json").write_text(json.dumps(meta))
        return pkg

    missing = tmp_path / "weights" / "microau-tiny.pt"
    res = cli("predict", package_with(missing), "--onset", frame(folder, onset), "--apex", frame(folder, apex))
    assert res.exit_code == 1 and f"checkpoint file {str(missing)!r} does not exist" in res.output, res.output

    other = tmp_path / "other-tiny.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        import open_clip
        torch.save(open_clip.create_model(backbone.TINY, pretrained=None).state_dict(), other)
    res = cli("predict", package_with(other), "--onset", frame(folder, onset), "--apex", frame(folder, apex))
    assert res.exit_code == 1 and "is not the one the model was trained with" in res.output, res.output


def test_predict_usage_errors(tmp_path):
    for args in ([], ["--onset", "a.jpg"], ["--sheet", "s.xlsx"], ["--sheet", "s.xlsx", "--root", ".", "--onset", "1"]):
        res = cli("predict", tmp_path, *args)
        assert res.exit_code == 2, (args, res.output)
    res = cli("predict", tmp_path / "nothing", "--onset", "a.jpg", "--apex", "b.jpg")
    assert res.exit_code == 1 and "no such model folder" in res.output
    res = cli("predict", tmp_path, "--clip", tmp_path, "--onset", "img3", "--apex", "5")
    assert res.exit_code == 2 and "--onset 'img3'" in res.output


# -- the model layer alone: a saved and loaded package predicts what the trained model evaluates -------
@pytest.fixture(scope="module")
def small_fit():
    from model import compute_prefix
    from model.config import ModelConfig, TrainConfig
    from model.inference import train_model

    data = fake_prepared(subjects=3, per_subject=6, seed=1)
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=3,
                           model=ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1),
                           training=TrainConfig(epochs=2, batch_size=8, device="cpu", alpha=0.6, beta=1.0))
    return data, spec, train_model(spec, data, prefix=compute_prefix(spec.model, data, CASME2_AUS))


def test_loaded_package_predicts_what_the_trained_model_evaluates(small_fit, tmp_path):
    from model.inference import load_package, save_model
    from model.train import evaluate

    data, spec, fitted = small_fit
    assert list(fitted.train_idx) == list(range(len(data)))  # every sample trained on
    ref = evaluate(fitted.model, fitted.vis, fitted.tok, fitted.emotion_features(), fitted.emo_class)
    model = load_package(save_model(fitted, spec, tmp_path / "pkg", {"note": "x"}), device="cpu")
    # batch_size 7: the last batch of 18 clips holds 4 (batches must not change a clip's numbers)
    got = model.predict(data.flow, data.landmarks, data.sample_ids, batch_size=7)
    np.testing.assert_allclose(got.probs, ref["probs"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mer_scores, ref["mer_scores"].numpy(), rtol=1e-5, atol=1e-6)
    assert got.best_text == ref["best_text"].tolist() and model.info == {"note": "x"}
    assert got.preds.shape == (len(data), len(CASME2_AUS)) and len(got.mer_preds) == len(data)
    one = model.predict(data.flow[:1], data.landmarks[:1])  # a batch of one
    np.testing.assert_allclose(one.probs, ref["probs"].numpy()[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["no_meta", "bad_json", "other_schema", "truncated_weights", "no_probe"])
def test_damaged_package_is_named(small_fit, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    from model.inference import ModelPackageError, check_package, load_package, save_model

    data, spec, fitted = small_fit
    pkg = save_model(fitted, spec, tmp_path / "pkg")
    meta, weights = pkg / "model.json", pkg / "weights.safetensors"
    if damage == "no_meta":
        meta.unlink()
    elif damage == "bad_json":
        meta.write_text("{")
    elif damage == "other_schema":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "schema": 99}))
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            header = f.metadata()
        tensors = {k: v for k, v in load_file(str(weights)).items() if k != "probe"}
        save_file(tensors, str(weights), metadata=header)
    for call in (check_package, load_package):
        with pytest.raises(ModelPackageError) as e:
            call(pkg)
        assert str(pkg) in str(e.value), e.value


def test_damaged_stored_model_is_set_aside_and_trained_again(tmp_path, capsys):
    from orchestrator.serving.packages import stored_package

    root = tmp_path / "models"
    (root / "abc").mkdir(parents=True)
    (root / "abc" / "model.json").write_text("{")
    assert stored_package(root, "abc") is None
    assert not (root / "abc").exists() and (root / "damaged" / "abc" / "model.json").is_file()
    said = capsys.readouterr().err
    assert "unreadable" in said and "trained again" in said
    assert stored_package(root, "nothing") is None and capsys.readouterr().err == ""


def test_model_info_reads_a_package_of_an_earlier_version():
    """A package's `info` is `ModelInfo.to_dict()`; one written before a field existed reads back with the
    fields it has (and the defaults for the rest), and writes back the same dict."""
    from orchestrator.serving.packages import EVALUATION_NOTE, ModelInfo

    old = {"key": "k1", "trained_on": {"dataset": "casme2", "reader": "casme2", "data_key": "d",
                                       "subjects": ["sub01"], "samples": 3},
           "evaluation": EVALUATION_NOTE, "sweep": "main", "point": 0, "seed": 1, "unknown_later_field": 1}
    info = ModelInfo.from_dict(old)
    assert info.key == "k1" and info.trained_on["dataset"] == "casme2" and info.point == 0 and info.code == {}
    assert ModelInfo.from_dict(info.to_dict()) == info
    assert ModelInfo.from_dict({}).key == "" and ModelInfo.from_dict({}).trained_on == {}
