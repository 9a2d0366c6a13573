"""evaluate and export: metrics from real predictions, ONNX equal to PyTorch, metadata that
round-trips, a model that loads without torch, and INT8 that still classifies."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from cifarcli.checkpoint import load_checkpoint
from cifarcli.classifier import OnnxClassifier, TorchClassifier, load_classifier
from cifarcli.errors import CifarError
from cifarcli.evaluate import confusion_matrix, evaluate
from cifarcli.export import batchnorm_before_pool, export_checkpoint
from cifarcli.plots import write_outputs


def test_evaluating_a_checkpoint_reproduces_training_to_the_image(trained_run, dataset):
    for level, recorded in ((0, trained_run.test_acc), (trained_run.tta, trained_run.test_acc_tta)):
        result = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset, "test", tta=level)
        assert result.accuracy == recorded
    best = load_classifier(trained_run.run_dir / "best.pt")
    assert evaluate(best, dataset).accuracy == best.info.metrics.test_acc


def test_evaluating_the_onnx_export_matches_pytorch(trained_run, exported, dataset):
    for level in (0, 2):
        torch_result = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset, tta=level)
        onnx_result = evaluate(load_classifier(exported), dataset, tta=level)
        assert abs(torch_result.accuracy - onnx_result.accuracy) <= 0.001


def test_tta_gives_the_mirror_then_the_translations_to_the_least_sure_images(trained_run, dataset):
    from cifarcli.classifier import MIRROR_FRACTION, TRANSLATE_FRACTION

    classifier = load_classifier(trained_run.run_dir / "last.pt")
    images = dataset.test.images[:40]
    plain, tta = classifier.predict_plain_and_tta(images, level=2)
    np.testing.assert_array_equal(plain, classifier.predict_logits(images))

    def logits_of(views):
        return classifier.predict_logits(np.ascontiguousarray(views))

    def margins(logits):
        top_two = np.sort(logits, axis=1)[:, -2:]
        return top_two[:, 1] - top_two[:, 0]

    # airbench's level 2 on every image: the image and its mirror half the weight, the mirrors of
    # the two one-pixel translations (reflect padding) the other half.
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 2:, 2:], padded[:, :-2, :-2]
    with_mirror = 0.5 * (plain + logits_of(images[:, :, ::-1]))
    translated = sum(logits_of(view) + logits_of(view[:, :, ::-1]) for view in (up_left, down_right))
    full = 0.5 * with_mirror + 0.125 * translated

    kept = np.flatnonzero((tta == plain).all(axis=1))
    got_full = np.flatnonzero(np.isclose(tta, full, rtol=1e-5, atol=1e-5).all(axis=1))
    got_mirror = np.setdiff1d(np.arange(len(images)), np.union1d(kept, got_full))
    np.testing.assert_allclose(tta[got_mirror], with_mirror[got_mirror], rtol=1e-5, atol=1e-5)
    assert len(got_full) == np.ceil(TRANSLATE_FRACTION * len(images)) == 6
    assert len(got_full) + len(got_mirror) == np.ceil(MIRROR_FRACTION * len(images)) == 16
    # The mirror went to the least sure by their plain logits, the translations to the least sure
    # of those by their blend with the mirror.
    assert margins(plain)[np.union1d(got_full, got_mirror)].max() <= margins(plain)[kept].min()
    assert margins(with_mirror)[got_full].max() <= margins(with_mirror)[got_mirror].min()


def test_metrics_agree_with_the_predictions(trained_run, dataset, tmp_path):
    classifier = load_classifier(trained_run.run_dir / "last.pt")
    result = evaluate(classifier, dataset, "train")
    predictions = classifier.predict_logits(dataset.train.images).argmax(1)
    expected = confusion_matrix(dataset.train.labels, predictions, 3)
    assert result.confusion == expected.tolist()
    assert sum(map(sum, result.confusion)) == len(dataset.train) == result.images
    assert result.accuracy == pytest.approx(float((predictions == dataset.train.labels).mean()), abs=1e-5)
    for index, row in enumerate(result.per_class):
        assert row["support"] == int(expected[index].sum())
        assert row["recall"] == pytest.approx(expected[index, index] / expected[index].sum(), abs=1e-4)
    written, skipped = write_outputs(result, tmp_path / "eval", dataset.train.images)
    assert json.loads(written[0].read_text())["confusion"] == result.confusion and not skipped
    names = ["metrics.json", "confusion.png", "per_class_accuracy.png", "reliability.png", "mistakes.png"]
    assert [path.name for path in written] == names
    for picture in written[1:]:
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_most_confident_mistakes_are_the_models_own_and_ranked(trained_run, dataset, tmp_path):
    from PIL import Image

    from cifarcli.classifier import softmax
    from cifarcli.data import Dataset, Split

    # Labels moved by one class: most predictions of a good model become mistakes.
    moved = Split(dataset.test.images, (dataset.test.labels + 1) % 3)
    wrong_labels = Dataset(dataset.train, moved, dataset.classes, "moved labels")
    classifier = load_classifier(trained_run.run_dir / "last.pt")
    result = evaluate(classifier, wrong_labels)
    probabilities = softmax(classifier.predict_logits(moved.images).astype(np.float64))
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    mistakes = result.confident_mistakes
    assert len(mistakes) == 25 and [m["confidence"] for m in mistakes] == sorted(
        (m["confidence"] for m in mistakes), reverse=True
    )
    for mistake in mistakes:
        i = mistake["index"]
        assert mistake["true"] == dataset.classes[moved.labels[i]] != mistake["predicted"]
        assert mistake["predicted"] == dataset.classes[predicted[i]]
        assert mistake["confidence"] == pytest.approx(confidence[i], abs=1e-5)
    unlisted = set(np.flatnonzero(predicted != moved.labels)) - {m["index"] for m in mistakes}
    assert max(confidence[list(unlisted)]) <= mistakes[-1]["confidence"] + 1e-5
    written, _ = write_outputs(result, tmp_path / "eval", moved.images)
    with Image.open(written[4]) as gallery:
        assert gallery.size[0] > 500 and gallery.size[1] > 5 * 200  # a 5 x 5 grid of images
    assert json.loads(written[0].read_text())["confident_mistakes"] == mistakes


@pytest.mark.parametrize(
    ("correct", "ece"),
    [(9, 0.0), (5, 0.4), (10, 0.1)],
)
def test_calibration_error_is_the_gap_between_confidence_and_accuracy(correct, ece):
    from cifarcli.evaluate import calibration

    error, bins = calibration(np.full(10, 0.9), np.arange(10) < correct)
    assert error == pytest.approx(ece) and len(bins) == 1 and bins[0]["images"] == 10
    assert bins[0]["accuracy"] == correct / 10 and bins[0]["lower"] < 0.9 <= bins[0]["upper"]


def test_class_count_mismatch_is_refused(trained_run, tmp_path):
    from cifarcli.data import load_dataset
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "two", 4, 2)
    for split in ("train", "test"):
        for file in (root / split / "vertical").iterdir():
            file.unlink()
        (root / split / "vertical").rmdir()
    two_classes = load_dataset(root, cache_dir=tmp_path / "cache")
    with pytest.raises(CifarError, match="has 3 classes but"):
        evaluate(load_classifier(trained_run.run_dir / "last.pt"), two_classes)


def test_export_is_one_self_describing_file_equal_to_pytorch(trained_run, exported, dataset):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["classes"]) == dataset.classes
    assert metadata["input_size"] == "32" and metadata["input_layout"] == "NCHW"
    assert json.loads(metadata["test_accuracy"]) == trained_run.test_acc
    assert metadata["export_date"] and metadata["temperature"] == str(OnnxClassifier(exported).info.temperature)
    # cifarcli reads the model card, the checkpoint's description in its JSON form, and nothing else.
    card = json.loads(metadata["cifarcli_model_card"])
    assert card == {
        **load_checkpoint(trained_run.run_dir / "last.pt")["info"].to_dict(),
        "temperature": card["temperature"],
    }
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis

    torch_model = TorchClassifier.from_checkpoint(trained_run.run_dir / "last.pt")
    onnx_model = OnnxClassifier(exported)
    assert onnx_model.info.classes == torch_model.info.classes
    assert onnx_model.info.mean == torch_model.info.mean
    for count in (1, 7, 90):  # any batch size
        images = dataset.test.images[:count]
        np.testing.assert_allclose(onnx_model.predict_logits(images), torch_model.predict_logits(images), atol=1e-4)


def test_export_loads_in_a_process_without_torch(exported, dataset, tmp_path):
    np.save(tmp_path / "images.npy", dataset.test.images[:16])
    script = f"""
import sys, numpy as np
sys.modules["torch"] = None  # any import of torch now fails
from cifarcli.classifier import OnnxClassifier
logits = OnnxClassifier({str(exported)!r}).predict_logits(np.load({str(tmp_path / "images.npy")!r}))
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print(logits.shape)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "(16, 3)"


def test_failed_parity_check_keeps_what_the_user_had(trained_run, tmp_path, monkeypatch):
    import torch

    from cifarcli import export
    from cifarcli.checkpoint import build_model, load_checkpoint, save_checkpoint

    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the user's earlier file")
    with monkeypatch.context() as patch:
        patch.setattr(export, "MAX_ABS_DIFF", -1.0)  # no export can pass: what does a failed check leave?
        with pytest.raises(CifarError, match="differs from PyTorch"):
            export_checkpoint(trained_run.run_dir / "last.pt", target)
    saved = load_checkpoint(trained_run.run_dir / "last.pt")
    model = build_model(saved["info"], saved["model"])
    with torch.no_grad():
        model[-1].weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model, saved["info"])
    with pytest.raises(CifarError, match="weights are not finite"):
        export_checkpoint(tmp_path / "nan.pt", target)
    assert target.read_bytes() == b"the user's earlier file"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    with pytest.raises(CifarError, match=r"--opset 99"):
        export_checkpoint(trained_run.run_dir / "last.pt", target, opset=99)


def test_int8_export_is_written_described_and_accurate(trained_run, dataset, tmp_path, capfd):
    report = export_checkpoint(trained_run.run_dir / "last.pt", tmp_path / "m.onnx", dataset=dataset, int8=True)
    quantized = tmp_path / "m.int8.onnx"
    assert report.int8["path"] == str(quantized) and quantized.exists()
    model = onnx.load(str(quantized))
    assert any(node.op_type == "QLinearConv" for node in model.graph.node)
    assert {node.domain for node in model.graph.node} == {""}  # standard operators only: OpenCV loads it
    described = OnnxClassifier(quantized).info
    assert described.classes == dataset.classes
    assert report.int8["int8_test_acc"] >= report.int8["fp32_test_acc"] - 0.01  # the default refusal limit
    assert report.int8["calibration_images"] == 240
    # Its metadata carries its own accuracy, which evaluating it reproduces.
    assert described.metrics.test_acc == round(report.int8["int8_test_acc"], 5)
    assert described.metrics.test_acc_tta is None and described.metrics.test_loss is None
    assert evaluate(OnnxClassifier(quantized), dataset).accuracy == described.metrics.test_acc
    assert "WARNING" not in capfd.readouterr().err


def test_int8_export_that_loses_too_much_is_refused_and_the_fp32_file_kept(trained_run, dataset, tmp_path):
    with pytest.raises(
        CifarError, match=r"m.int8.onnx: not written \(the fp32 m.onnx was\), INT8 scores .* --int8-max"
    ):
        # A limit of -0.5 demands INT8 beat fp32 (90% or more here) by 50 points: impossible.
        export_checkpoint(
            trained_run.run_dir / "last.pt", tmp_path / "m.onnx", dataset=dataset, int8=True, int8_max_loss=-0.5
        )
    assert not (tmp_path / "m.int8.onnx").exists()
    assert evaluate(OnnxClassifier(tmp_path / "m.onnx"), dataset).accuracy == trained_run.test_acc


def test_onnx_files_that_are_not_ours_are_refused(tmp_path, exported):
    plain = onnx.load(str(exported))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(CifarError, match="not a cifarcli export"):
        OnnxClassifier(tmp_path / "plain.onnx")
    external = onnx.load(str(exported))
    onnx.save(external, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    with pytest.raises(CifarError, match="external data"):
        OnnxClassifier(tmp_path / "ext.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CifarError, match=r"junk\.onnx"):
        OnnxClassifier(tmp_path / "junk.onnx")


def test_crafted_checkpoint_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format": 1, "model": Exploit()}, tmp_path / "evil.pt")  # as torch.save writes one
    with pytest.raises(CifarError, match="refused: loading it would run code"):
        load_classifier(tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"format": 1, "model": Exploit()}))  # a bare pickle
    with pytest.raises(CifarError, match="not a cifarcli checkpoint"):
        load_classifier(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_evaluating_an_onnx_model_does_not_need_torch(exported, image_folder, cache_dir):
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
sys.argv = ["cifar", "evaluate", {str(exported)!r}, "--data", {str(image_folder)!r}, "--json"]
from cifarcli.cli import main
main()
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["images"] == 90


# The version matrix of ONNX Runtime: (newest ai.onnx opset, newest IR version) each release loads.
ONNXRUNTIME_LIMITS = {"1.17": (20, 9)}


def declared_onnxruntime_floor() -> str:
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    return re.search(r'"onnxruntime>=([\d.]+)"', pyproject)[1]


def opset_of(model) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def test_bundled_models_load_on_the_declared_onnxruntime_floor():
    from cifarcli.bundled import DEFAULT as DEFAULT_MODEL

    newest_opset, newest_ir = ONNXRUNTIME_LIMITS[declared_onnxruntime_floor()]
    bundled = sorted(DEFAULT_MODEL.parent.glob("*.onnx"))
    assert DEFAULT_MODEL in bundled
    for path in bundled:
        model = onnx.load(str(path))
        assert opset_of(model) <= newest_opset and model.ir_version <= newest_ir, path


@pytest.mark.slow
def test_default_export_is_the_portable_opset_and_exact_for_gelu_networks(tmp_path):
    # export_checkpoint refuses any parity miss against PyTorch.
    from cifarcli.checkpoint import ModelInfo, materialize, save_checkpoint
    from cifarcli.models import create_model

    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    model = create_model("airbench-cpu", 3, mean, std)
    materialize(model, 32)
    save_checkpoint(tmp_path / "net.pt", model.eval(), ModelInfo("airbench-cpu", ["a", "b", "c"], 32, mean, std))
    report = export_checkpoint(tmp_path / "net.pt", tmp_path / "net.onnx")
    exported_model = onnx.load(str(tmp_path / "net.onnx"))
    assert (report.opset, report.ir_version) == (20, 9) == (opset_of(exported_model), exported_model.ir_version)
    assert "Gelu" in {node.op_type for node in exported_model.graph.node}
    assert report.agreement == 1.0 and report.max_abs_diff <= 1e-4 and "OpenCV" in report.loads_on


def test_a_model_too_new_for_the_installed_onnxruntime_names_its_opset_and_the_fixes(exported, tmp_path):
    import onnxruntime

    model = onnx.load(str(exported))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 99
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(CifarError) as raised:
        OnnxClassifier(tmp_path / "future.onnx")
    message = str(raised.value)
    assert "needs opset 99 of ai.onnx" in message and f"onnxruntime {onnxruntime.__version__}" in message
    assert "pip install -U onnxruntime" in message and "--opset 20" in message and "\n" not in message


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with(temperature):
    from cifarcli.classifier import softmax
    from cifarcli.evaluate import fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 10))
    probabilities = softmax(logits / temperature)
    labels = np.array([rng.choice(10, p=p) for p in probabilities])
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.1)


def test_export_with_data_fits_a_temperature_that_predict_and_evaluate_use(trained_run, dataset, tmp_path):
    from cifarcli.classifier import softmax
    from cifarcli.predict import predict_files

    report = export_checkpoint(trained_run.run_dir / "last.pt", tmp_path / "m.onnx", dataset=dataset)
    model = OnnxClassifier(tmp_path / "m.onnx")
    assert model.info.temperature == report.temperature and report.temperature != 1.0
    assert report.calibration["fitted_on"] == "240 training images"
    assert report.calibration["test_ece_scaled"] <= report.calibration["test_ece"] + 0.02
    from cifarcli.images import decode_image
    from tests.conftest import make_image_folder

    files = sorted(make_image_folder(tmp_path / "shapes", 1, 5).joinpath("test", "disc").glob("*.png"))
    rows = list(predict_files(model, files))
    logits = model.predict_logits(np.stack([decode_image(path, 32) for path in files]))
    expected = softmax(logits / report.temperature).max(1)
    assert [row.confidence for row in rows] == pytest.approx(expected.tolist(), abs=1e-6)


def test_batchnorm_moves_before_pooling_only_where_the_output_stays_bitwise_the_same():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8),
    )  # fmt: skip
    for norm in (model[2], model[6]):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.bias.data.normal_()
    with torch.no_grad():
        model[6].weight[3] = -0.5  # one negative scale: max and this BatchNorm do not commute
    model.eval()
    moved = batchnorm_before_pool(model)
    assert [type(layer).__name__ for layer in moved] == [
        "Conv2d", "BatchNorm2d", "MaxPool2d", "GELU", "Conv2d", "MaxPool2d", "BatchNorm2d",
    ]  # fmt: skip
    assert isinstance(model[1], nn.MaxPool2d)  # the original is untouched
    images = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(moved(images), model(images))
