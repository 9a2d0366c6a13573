"""evaluate and export: metrics from real predictions, ONNX equal to PyTorch, metadata that
round-trips, a model that loads without torch, and INT8 that still classifies."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from cifarcli.classifier import OnnxClassifier, TorchClassifier, load_classifier
from cifarcli.errors import CifarError
from cifarcli.evaluate import confusion_matrix, evaluate, write_outputs
from cifarcli.export import export_checkpoint


def test_evaluating_a_checkpoint_reproduces_training_to_the_image(trained_run, dataset):
    for level, recorded in ((0, trained_run.test_acc), (trained_run.tta, trained_run.test_acc_tta)):
        result = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset, "test", tta=level)
        assert result.accuracy == recorded
    best = load_classifier(trained_run.run_dir / "best.pt")
    assert evaluate(best, dataset).accuracy == best.info.metrics["test_acc"]


def test_evaluating_the_onnx_export_matches_pytorch(trained_run, exported, dataset):
    for level in (0, 2):
        torch_result = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset, tta=level)
        onnx_result = evaluate(load_classifier(exported), dataset, tta=level)
        assert abs(torch_result.accuracy - onnx_result.accuracy) <= 0.001


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
    written = write_outputs(result, tmp_path / "eval")
    assert json.loads(written[0].read_text())["confusion"] == result.confusion
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    assert metadata["cifarcli_model"] == "tutorial" and metadata["export_date"]
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


def test_failed_parity_check_keeps_what_the_user_had(trained_run, tmp_path):
    import torch

    from cifarcli.checkpoint import build_model, load_checkpoint, save_checkpoint

    saved = load_checkpoint(trained_run.run_dir / "last.pt")
    model = build_model(saved["info"], saved["model"])
    with torch.no_grad():
        model[-1].weight[0, 0] = float("nan")  # NaN logits can never match
    save_checkpoint(tmp_path / "broken.pt", model, saved["info"])
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the user's earlier file")
    with pytest.raises(CifarError, match="differs from PyTorch"):
        export_checkpoint(tmp_path / "broken.pt", target)
    assert target.read_bytes() == b"the user's earlier file"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    with pytest.raises(CifarError, match=r"--opset 99"):
        export_checkpoint(trained_run.run_dir / "last.pt", target, opset=99)


def test_int8_export_is_written_described_and_accurate(trained_run, dataset, tmp_path):
    report = export_checkpoint(trained_run.run_dir / "last.pt", tmp_path / "m.onnx", dataset=dataset, int8=True)
    quantized = tmp_path / "m.int8.onnx"
    assert report.int8["path"] == str(quantized) and quantized.exists()
    model = onnx.load(str(quantized))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert OnnxClassifier(quantized).info.classes == dataset.classes
    assert report.int8["int8_test_acc"] >= report.int8["fp32_test_acc"] - 0.05
    assert report.int8["calibration_images"] == 240


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
    with pytest.raises(CifarError, match="refused, it would run code"):
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
