"""Training: a real model learns held-out data; the run folder holds what it promises;
checkpoints load with weights_only; same seed, same history; resume equals no interruption."""

import csv
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from cifarcli.augment import augment_batch, crop_size, draw_crop_offsets, reflect_pad
from cifarcli.checkpoint import load_checkpoint
from cifarcli.errors import CifarError
from cifarcli.models import REGISTRY, get_model_entry
from cifarcli.optim import lr_factor, orthogonalize
from cifarcli.run import prepare_run
from cifarcli.run_folder import HISTORY_FIELDS, RunFolder, open_resumable
from cifarcli.train import train


def test_tutorial_learns_held_out_shapes(trained_run):
    assert trained_run.test_acc >= 0.9  # three classes: chance is 0.33
    assert trained_run.test_acc_tta >= 0.9


def test_run_folder_holds_checkpoints_history_curves_and_config(trained_run):
    run_dir = trained_run.run_dir
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "config.json"):
        assert (run_dir / name).stat().st_size > 0, name
    with open(run_dir / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == HISTORY_FIELDS
    assert [int(row["epoch"]) for row in rows] == list(range(1, 13))
    assert float(rows[-1]["test_acc"]) == trained_run.test_acc
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "tutorial" and config["recipe"]["epochs"] == 12
    assert config["data"]["classes"] == ["disc", "horizontal", "vertical"]


def test_checkpoint_is_plain_weights_with_json_safe_metadata(trained_run):
    raw = torch.load(trained_run.run_dir / "last.pt", weights_only=True)
    json.dumps(raw["info"])  # JSON-safe
    info = load_checkpoint(trained_run.run_dir / "last.pt")["info"]
    assert info.model == "tutorial" and info.classes == ["disc", "horizontal", "vertical"]
    assert info.input_size == 32 and len(info.mean) == 3 and info.epoch == 12
    assert info.metrics.test_acc == trained_run.test_acc
    assert info.metrics.test_acc_tta == trained_run.test_acc_tta


@pytest.mark.filterwarnings("error")  # torch warns of a read-only array it is handed
def test_channel_statistics_from_histograms_equal_numpys():
    from cifarcli.models import channel_mean_std

    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    images[..., 2] //= 3  # a channel with another spread
    images.setflags(write=False)
    mean, std = channel_mean_std(images)
    assert mean == (images.reshape(-1, 3).mean(0) / 255).round(4).tolist()
    assert std == (images.reshape(-1, 3).std(0) / 255).round(4).tolist()


def test_lr_schedule_is_piecewise_linear():
    recipe = get_model_entry("airbench94").recipe
    assert lr_factor(0, 100, recipe) == pytest.approx(0.2)
    assert lr_factor(23, 100, recipe) == pytest.approx(1.0)
    assert lr_factor(100, 100, recipe) == pytest.approx(0.07)


@pytest.mark.slow
def test_resize_stages_train_on_whole_images_scaled_down(dataset, tmp_path):
    from cifarcli.augment import scaled

    images = torch.rand(2, 3, 32, 32)
    small = scaled(images, 16)
    assert small.shape == (2, 3, 16, 16)
    torch.testing.assert_close(small.mean(), images.mean(), atol=0.01, rtol=0)  # the whole image, not a window
    recipe = get_model_entry("airbench-cpu").recipe.override(epochs=2, batch_size=80, crops=[[16, 1]])
    context = prepare_run("cpu", "fp32", run_dir=tmp_path)
    result = train(dataset, "airbench-cpu", replace(recipe, progressive="resize"), context)
    assert len(result.history) == 2
    with pytest.raises(CifarError, match="progressive=zoom: choose crop or resize"):
        recipe.override(progressive="zoom")


def test_small_crops_come_first_and_are_windows_of_the_padded_images():
    recipe = get_model_entry("airbench-cpu").recipe.override(crops=[[16, 2], [24, 3]])
    assert [crop_size(epoch, 32, recipe) for epoch in (0, 1, 2, 4, 5, 9)] == [16, 16, 24, 24, 32, 32]
    assert crop_size(2, 20, recipe) == 20  # images no larger than the crop keep their size
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    padded = torch.from_numpy(reflect_pad(images, 2))  # (6, 3, 36, 36)
    no_flip = torch.zeros(6, dtype=torch.bool)
    offsets = draw_crop_offsets(padded, 24, 1, 6, torch.Generator().manual_seed(0))  # (1 step, 2, 6)
    assert offsets.shape == (1, 2, 6) and offsets.min() >= 0 and offsets.max() <= 12
    crops = augment_batch(padded, torch.arange(6), 24, no_flip, offsets[0])
    assert crops.shape == (6, 3, 24, 24) and crops.dtype == torch.uint8
    for crop, image in zip(crops, padded, strict=True):
        windows = image.unfold(1, 24, 1).unfold(2, 24, 1)  # (3, 13, 13, 24, 24)
        assert (windows == crop[:, None, None]).flatten(3).all(3).all(0).any()


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (10, 256)])
def test_orthogonalize_brings_singular_values_near_one_and_keeps_directions(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    u, _, v = torch.linalg.svd(matrix, full_matrices=False)
    in_matrix_basis = u.T @ orthogonalize(matrix) @ v.T  # diagonal iff the singular vectors are kept
    diagonal = torch.diagonal(in_matrix_basis)
    assert (in_matrix_basis - torch.diag(diagonal)).abs().max() < 1e-4
    assert diagonal.min() > 0.5 and diagonal.max() < 1.3  # from singular values ~10x apart


BF16_ULPS_ALLOWED = 1.5  # the weight gradient sums three matrix products, each rounded once to bf16


def bf16_ulps(value, reference) -> float:
    """The largest |value - reference| in bf16 units of last place at the reference's largest magnitude."""
    scale = reference.abs().max().item()
    return (value.double() - reference).abs().max().item() / 2.0 ** (np.floor(np.log2(scale)) - 7)


def float64_reference(inputs, weight, upstream, conv_out, pool_indices):
    """The convolution's output, input gradient and weight gradient in float64 from the same
    bf16-rounded inputs, weights and output gradient. Pooled, through the path's own pool indices
    (indices into its output, which may lack the last row and column)."""
    x, w, grad = (tensor.bfloat16().double() for tensor in (inputs, weight, upstream))
    full = torch.nn.functional.conv2d(x, w, padding=1)
    if pool_indices is not None:
        rows, columns = pool_indices // conv_out.shape[-1], pool_indices % conv_out.shape[-1]
        at = (rows * full.shape[-1] + columns).flatten(2)
        out = full.flatten(2).gather(2, at).view_as(pool_indices)
        grad = torch.zeros_like(full).flatten(2).scatter(2, at, grad.flatten(2)).view_as(full)
    else:
        out = full
    input_grad = torch.nn.grad.conv2d_input(x.shape, w, grad, padding=1)
    return out, input_grad, torch.nn.grad.conv2d_weight(x, w.shape, grad, padding=1)


@pytest.mark.cpu_kind
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("size", [2, 3, 4, 5, 7, 15, 16])
def test_small_map_convolution_computes_what_conv2d_computes(size, pooled):
    # bf16 training takes the weight gradient of maps up to SMALL_MAP (15) px as matrix
    # products, and on maps up to TINY_MAP (5) px the forward pass and input gradient too; larger
    # maps stay with nn.Conv2d's. Both paths are measured against float64 from the same bf16
    # inputs: ours must be within BF16_ULPS_ALLOWED or no further than oneDNN's (whose emulated
    # bf16 on AVX2-only CPUs is several ulps off). The batch spans three of the weight gradient's
    # products, the last one short. Before a 2x2 max-pool (pooled), a small odd map's convolution
    # computes only the rows and columns the pool reads.
    from cifarcli.small_map_conv import IMAGES_PER_PRODUCT, SMALL_MAP, TINY_MAP, Conv3x3, use_matrix_products

    generator = torch.Generator().manual_seed(size)
    ours, reference = Conv3x3(16, 8, pooled), torch.nn.Conv2d(16, 8, 3, padding=1, bias=False)
    reference.load_state_dict(ours.state_dict())
    use_matrix_products(ours, True)
    batch = 2 * IMAGES_PER_PRODUCT + 2
    inputs = torch.randn(batch, 16, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    out_size = size // 2 if pooled else size
    upstream = torch.randn(batch, 8, out_size, out_size, generator=generator)
    results, errors = [], []
    for conv in (ours, reference):
        x = inputs.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv_out = conv(x)
            pool = torch.nn.functional.max_pool2d
            out, indices = pool(conv_out, 2, return_indices=True) if pooled else (conv_out, None)
        (out.float() * upstream).sum().backward()
        results.append((out, x.grad, conv.weight.grad))
        exact = float64_reference(inputs, conv.weight, upstream, conv_out, indices)
        errors.append([bf16_ulps(value, expected) for value, expected in zip(results[-1], exact, strict=True)])
        if conv is ours:
            assert (type(conv_out.grad_fn).__name__ == "SmallMapConvBackward") == (size <= SMALL_MAP)
            computed = size - 1 if pooled and size % 2 and size <= SMALL_MAP else size
            assert conv_out.shape[-2:] == (computed, computed)
    (out, input_grad, weight_grad), (out_ref, input_grad_ref, weight_grad_ref) = results
    if size > TINY_MAP and not pooled:  # oneDNN's own forward and input gradient on the same shapes
        assert torch.equal(out, out_ref) and torch.equal(input_grad, input_grad_ref)
    if size > SMALL_MAP:  # nn.Conv2d's own path throughout
        assert torch.equal(weight_grad, weight_grad_ref)
    for name, ours_ulps, onednn_ulps in zip(("output", "input gradient", "weight gradient"), *errors, strict=True):
        assert ours_ulps <= max(onednn_ulps, BF16_ULPS_ALLOWED), (name, ours_ulps, onednn_ulps)
    with torch.no_grad():  # evaluation and export: nn.Conv2d's own forward
        assert torch.equal(ours.eval()(inputs), reference(inputs))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("optimizer=adamw", "--set optimizer=adamw: choose sgd or muon"),
        ("batch_size=0", "--set batch_size=0: choose a batch size of at least 1"),
        ("epochs=0", "--set epochs=0.0: choose a number of epochs above 0"),
        ("epochs=-5", "--set epochs=-5.0: choose a number of epochs above 0"),
        ("label_smoothing=2", "--set label_smoothing=2.0: choose a label smoothing from 0"),
        ("flip=sideways", "--set flip=sideways: choose alternating, random or none"),
        ("tta=7", "--set tta=7: choose 0 (none), 1 (mirror) or 2"),
        ("crops=0:2", "--set crops=0:2: choose SIZE:EPOCHS stages"),
        ("bias_lr_scale=0", "--set bias_lr_scale=0.0: choose a scale above 0"),
    ],
)
def test_every_recipe_field_is_checked_whatever_sets_it(setting, message):
    from cifarcli.recipes import parse_recipe_settings

    recipe = get_model_entry("tutorial").recipe
    with pytest.raises(CifarError, match=re.escape(message)):
        recipe.override(**parse_recipe_settings([setting]))
    name = setting.partition("=")[0]
    with pytest.raises(CifarError, match=re.escape(message)):  # as config.json of a resumed run gives it
        type(recipe)(**{**recipe.to_dict(), name: parse_recipe_settings([setting])[name]})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "precision"),
    [*((name, "fp32") for name in sorted(REGISTRY)), pytest.param("airbench-cpu", "bf16", marks=pytest.mark.cpu_kind)],
)
def test_every_model_trains_a_step_and_evaluates(name, precision, dataset, tmp_path):
    recipe = get_model_entry(name).recipe.override(epochs=1, batch_size=120, tta=1)
    result = train(dataset, name, recipe, prepare_run("cpu", precision, run_dir=tmp_path))
    assert result.precision == precision
    assert len(result.history) == 1 and 0.0 <= result.test_acc <= 1.0
    assert np.isfinite(result.history[0]["train_loss"])


@pytest.mark.slow
def test_same_seed_gives_identical_history(dataset, tmp_path):
    recipe = get_model_entry("tutorial").recipe.override(epochs=2, batch_size=64, seed=3)
    first = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "a"))
    second = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "b"))
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in first.history]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in second.history]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tutorial", "airbench-cpu"])
def test_resume_after_an_interruption_ends_with_the_same_weights(name, dataset, tmp_path):
    # airbench-cpu: Muon's state, and the switch from small crops to full images after epoch 2.
    crops = [[24, 2]] if get_model_entry(name).recipe.crops else None
    recipe = get_model_entry(name).recipe.override(epochs=3, batch_size=80, crops=crops)
    whole = train(dataset, name, recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "whole"))

    class StopAfterEpoch2:
        def start(self, *args): ...
        def epoch_start(self, epoch, steps): ...
        def step(self, *args): ...

        def epoch_end(self, row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train(dataset, name, recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "cut"), events=StopAfterEpoch2())
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["info"].epoch == 2
    context = prepare_run("cpu", "fp32", run_dir=tmp_path / "cut")
    resumed = train(dataset, name, recipe, context, resume=open_resumable(tmp_path / "cut"))
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    whole_state = load_checkpoint(whole.run_dir / "last.pt")["model"]
    resumed_state = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    for key, tensor in whole_state.items():
        torch.testing.assert_close(resumed_state[key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_resuming_a_history_that_lacks_epochs_fails_in_one_line(dataset, tmp_path):
    recipe = get_model_entry("tutorial").recipe.override(epochs=1, batch_size=64)
    run = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "run"))
    history = run.run_dir / "history.csv"
    history.write_text(history.read_text().splitlines()[0] + "\n")  # the header alone
    with pytest.raises(CifarError, match=r"history.csv lacks epochs that last.pt has; start a new run"):
        open_resumable(run.run_dir)


@pytest.mark.slow
def test_resuming_a_training_state_that_does_not_fit_fails_in_one_line(dataset, tmp_path):
    recipe = get_model_entry("tutorial").recipe.override(epochs=1, batch_size=64)
    run = train(dataset, "tutorial", recipe, prepare_run("cpu", "fp32", run_dir=tmp_path / "run"))
    last = run.run_dir / "last.pt"
    payload = torch.load(last, weights_only=True)
    payload["training"]["optimizer"] = payload["training"].pop("optimizers")[0]
    torch.save(payload, last)
    with pytest.raises(CifarError, match=r"the training state in last.pt does not fit this run; start a new run"):
        context = prepare_run("cpu", "fp32", run_dir=tmp_path / "run")
        train(dataset, "tutorial", recipe, context, resume=open_resumable(last))


@pytest.mark.cpu_kind
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_final_figures_are_reproduced_by_the_checkpoint_and_its_onnx_export(precision, dataset, tmp_path):
    # bf16 is forced even on CPUs without native bf16 (slow there, but the model is tiny).
    from cifarcli.classifier import load_classifier
    from cifarcli.evaluate import evaluate
    from cifarcli.export import export_checkpoint

    recipe = get_model_entry("tutorial").recipe.override(epochs=3, batch_size=32, lr=0.05)
    result = train(dataset, "tutorial", recipe, prepare_run("cpu", precision, run_dir=tmp_path))
    assert result.precision == precision
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == precision
    assert load_checkpoint(tmp_path / "last.pt")["info"].precision == precision
    export_checkpoint(tmp_path / "last.pt", tmp_path / "model.onnx", dataset=dataset)
    for path in (tmp_path / "last.pt", tmp_path / "model.onnx"):
        classifier = load_classifier(path)
        assert evaluate(classifier, dataset).accuracy == result.test_acc, path
        assert evaluate(classifier, dataset, tta=result.tta).accuracy == result.test_acc_tta, path
    best = load_checkpoint(tmp_path / "best.pt")["info"]
    assert evaluate(load_classifier(tmp_path / "best.pt"), dataset).accuracy == best.metrics.test_acc


@pytest.mark.cpu_kind
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_epochs_before_the_last_are_estimated_on_a_sample_and_say_so(precision, dataset, tmp_path, monkeypatch):
    from dataclasses import replace

    from cifarcli import scoring
    from cifarcli.classifier import TorchClassifier, load_classifier
    from cifarcli.evaluate import evaluate
    from cifarcli.run import autocast_dtype_of

    monkeypatch.setattr(scoring, "EPOCH_TEST_IMAGES", 40)  # of the 90 test images
    recipe = get_model_entry("tutorial").recipe.override(epochs=3, batch_size=32, lr=0.05)
    result = train(dataset, "tutorial", recipe, prepare_run("cpu", precision, run_dir=tmp_path / "whole"))
    scored = [(row["test_images"], row["scored_in"]) for row in result.history]
    assert scored == [(40, precision), (40, precision), (90, "fp32")]
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["epoch_test_images"] == 40

    class StopAfterEpoch1:
        def start(self, *args): ...
        def epoch_start(self, epoch, steps): ...
        def step(self, *args): ...

        def epoch_end(self, row):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataset, "tutorial", recipe, prepare_run("cpu", precision, run_dir=tmp_path / "cut"), StopAfterEpoch1())
    best = tmp_path / "cut" / "best.pt"
    metrics = load_checkpoint(best)["info"].metrics
    assert metrics.test_acc is None and metrics.estimated_on == f"40 test images in {precision}"
    # The estimate is that sample's figure in the training precision, to the image.
    sample = replace(dataset, test=dataset.test.sample(40))
    saved = load_classifier(best)
    in_training_precision = TorchClassifier(saved.model, saved.info, autocast_dtype=autocast_dtype_of(precision))
    assert metrics.estimated_test_acc == evaluate(in_training_precision, sample).accuracy
    scoring.rescore_exactly(RunFolder(tmp_path / "cut"), saved.model, saved.info, 1, dataset.test, "cpu")
    info = load_checkpoint(best)["info"]
    assert info.metrics.test_acc == evaluate(load_classifier(best), dataset).accuracy and info.epoch == 1


@pytest.mark.cpu_kind
@pytest.mark.slow
@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_steps_run_in_the_runs_precision_and_scoring_in_fp32(precision, dtype, dataset, tmp_path):
    from cifarcli import models

    seen = []  # the first convolution's output dtype at each call: training steps, then scoring
    build = models.REGISTRY["tutorial"].build

    def build_and_watch(*args):
        model = build(*args)
        model[1].register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
        return model

    entry = replace(models.REGISTRY["tutorial"], build=build_and_watch)
    recipe = entry.recipe.override(epochs=1, batch_size=64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.REGISTRY, "tutorial", entry)
        train(dataset, "tutorial", recipe, prepare_run("cpu", precision, run_dir=tmp_path))
    assert {dtype_ for training, dtype_ in seen if training} == {dtype}
    assert {dtype_ for training, dtype_ in seen[-2:]} == {torch.float32}  # the final, exact scoring


@pytest.mark.cpu_kind
@pytest.mark.parametrize(
    ("flags", "auto"), [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")]
)
def test_precision_is_decided_by_the_hardware_or_refused_in_one_line(flags, auto, cpu_kind):
    from cifarcli.run import resolve_precision

    cpu_kind(flags)
    assert resolve_precision("auto", "cpu") == auto
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(CifarError, match="--precision fp16: only on CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(CifarError, match="--precision fp8: choose auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


@pytest.mark.slow
def test_training_gives_the_process_back_as_it_found_it(dataset, tmp_path):
    import signal

    threads, sigterm = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    torch.set_num_threads(1)
    try:
        context = prepare_run("cpu", "fp32", run_dir=tmp_path)
        assert context.threads >= 1
        recipe = get_model_entry("tutorial").recipe.override(epochs=0.5, batch_size=64)
        train(dataset, "tutorial", recipe, context)
        assert torch.get_num_threads() == 1 and signal.getsignal(signal.SIGTERM) == sigterm
    finally:
        torch.set_num_threads(threads)


def test_a_global_batch_that_the_processes_cannot_share_is_refused(dataset, tmp_path):
    from cifarcli.distributed import Ranks
    from cifarcli.run import RunContext

    context = RunContext("cpu", "fp32", Ranks(rank=0, world=3, local_world=3), 1, RunFolder(tmp_path))
    recipe = get_model_entry("tutorial").recipe.override(batch_size=64)
    with pytest.raises(CifarError, match=r"--batch-size 64: .* 3 processes .* multiple of 3"):
        train(dataset, "tutorial", recipe, context)


def test_lookahead_ends_on_the_average():
    from cifarcli.optim import Lookahead

    model = torch.nn.Linear(3, 2)
    lookahead = Lookahead(model)
    average = [tensor.clone() for tensor in lookahead.average]
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.update(1.0)
    torch.testing.assert_close(model.weight.detach(), average[0])


def test_recipe_settings_are_read_as_their_fields_types():
    from cifarcli.recipes import parse_recipe_settings

    settings = ["label_smoothing=0.1", "batch-size=500", "lookahead=true", "flip=random", "crops=16:2,24:3.5"]
    assert parse_recipe_settings(settings) == {
        "label_smoothing": 0.1, "batch_size": 500, "lookahead": True, "flip": "random", "crops": ((16, 2.0), (24, 3.5)),
    }  # fmt: skip
    assert parse_recipe_settings(["crops="]) == {"crops": ()}
    for bad, message in (("nonsense=1", "recipe field"), ("batch_size=1.5", "an integer"), ("lr=nan", "finite")):
        with pytest.raises(CifarError, match=message):
            parse_recipe_settings([bad])


def test_run_folders_started_at_once_are_numbered_apart_and_take_the_umask(tmp_path):
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: RunFolder.create(tmp_path, "same").path.name, range(8)))
    assert sorted(folders) == sorted(["same", *(f"same{number}" for number in range(2, 9))])
    umask = os.umask(0o027)
    os.umask(umask)
    RunFolder(tmp_path / "same").write_history([])
    assert (tmp_path / "same" / "history.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_conv3x3_takes_the_matrix_product_path_only_when_the_run_switches_it_on():
    from cifarcli.small_map_conv import Conv3x3, use_matrix_products

    conv = Conv3x3(8, 8)
    inputs = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(conv(inputs).grad_fn).__name__ == "ConvolutionBackward0"  # autocast alone decides nothing
        use_matrix_products(conv, True)
        assert type(conv(inputs).grad_fn).__name__ == "SmallMapConvBackward"


def test_the_result_carries_the_final_confusion_matrix_that_evaluate_reproduces(trained_run, dataset):
    from cifarcli.classifier import load_classifier
    from cifarcli.evaluate import evaluate

    evaluation = evaluate(load_classifier(trained_run.run_dir / "last.pt"), dataset)
    assert trained_run.confusion == evaluation.confusion and trained_run.classes == evaluation.classes
    assert trained_run.per_class == evaluation.per_class
    assert json.loads(json.dumps(trained_run.to_dict()))["confusion"] == evaluation.confusion  # in --json
