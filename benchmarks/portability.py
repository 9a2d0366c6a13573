"""Portability: do our ONNX files load and agree in the runtimes users deploy them with?

    python benchmarks/portability.py [--data PATH] [--venvs /tmp/cifarcli-onnx-compat]

Checks the bundled model(s) in cifarcli/assets and a default `cifar export` of every registered
model (its weights as built, untrained: loading and numerics do not depend on training) in
throwaway virtual environments: the oldest ONNX Runtime we support, the newest one pip offers,
and OpenCV's DNN module (asking for the output named "logits": files with a features output have
two). Each runtime classifies the same 1,000 test images; a row passes when
it loads the file and its top-1 agrees with this environment's ONNX Runtime on every image.
One row per file and runtime goes to benchmarks/results/portability.jsonl.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, SHARED_DATA, append_result, code_version, shown

RUNTIMES = {  # name: what pip installs into its venv
    "onnxruntime 1.17.3": ["onnxruntime==1.17.3", "numpy<2"],
    "onnxruntime newest": ["onnxruntime", "numpy"],
    "opencv dnn 4.x": ["opencv-python-headless<5", "numpy"],
}
CLASSIFY = """
import json, sys
import numpy as np
model, images, out = sys.argv[1:4]
batch = np.load(images)
try:
    if "{runtime}".startswith("opencv"):
        import cv2
        net = cv2.dnn.readNetFromONNX(model)
        logits = []
        for image in batch:
            net.setInput(image[None])
            logits.append(net.forward("logits")[0])
        version = cv2.__version__
    else:
        import onnxruntime as ort
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        logits = session.run(None, {{session.get_inputs()[0].name: batch}})[0]
        version = ort.__version__
    result = {{"version": version, "top1": np.argmax(np.asarray(logits), 1).tolist()}}
except Exception as error:
    result = {{"error": str(error).splitlines()[0][:200]}}
json.dump(result, open(out, "w"))
"""


def make_venv(folder: Path, requirements: list[str]) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


def default_exports(folder: Path) -> list[Path]:
    """A checkpoint of every registered model as built, exported with `cifar export`'s defaults."""
    from cifarcli.checkpoint import ModelInfo, materialize, save_checkpoint
    from cifarcli.data import CIFAR10_CLASSES
    from cifarcli.export import export_checkpoint
    from cifarcli.models import REGISTRY, create_model

    exports = []
    for name in REGISTRY:
        mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
        model = create_model(name, 10, mean, std)
        materialize(model, 32)
        checkpoint = folder / f"{name}.pt"
        save_checkpoint(checkpoint, model.eval(), ModelInfo(name, CIFAR10_CLASSES, 32, mean, std))
        exports.append(export_checkpoint(checkpoint, folder / f"{name}.onnx").path)
    return exports


def main() -> None:
    import onnx

    from cifarcli.classifier import OnnxClassifier, to_model_input
    from cifarcli.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--venvs", type=Path, default=Path(tempfile.gettempdir()) / "cifarcli-onnx-compat")
    args = parser.parse_args()
    work = args.venvs / "files"
    work.mkdir(parents=True, exist_ok=True)
    test = load_dataset(args.data).test
    images = work / "images.npy"
    np.save(images, to_model_input(test.images[:1000]))
    pythons = {name: make_venv(args.venvs / name.replace(" ", "-"), pins) for name, pins in RUNTIMES.items()}
    script = work / "classify.py"

    for model in [*sorted((ROOT / "cifarcli" / "assets").glob("*.onnx")), *default_exports(work)]:
        proto = onnx.load(str(model), load_external_data=False)
        opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
        expected = OnnxClassifier(model).predict_logits(test.images[:1000]).argmax(1)
        for runtime, python in pythons.items():
            script.write_text(CLASSIFY.format(runtime=runtime))
            out = work / "result.json"
            out.unlink(missing_ok=True)
            ran = subprocess.run([str(python), str(script), str(model), str(images), str(out)], check=False)
            result = json.loads(out.read_text()) if out.exists() else {"error": f"crashed (exit {ran.returncode})"}
            bundled = model.is_relative_to(ROOT / "cifarcli")
            figures = {
                "code": code_version(),
                "file": shown(model) if bundled else f"default export of {model.stem}",
                "opset": opset,
                "ir_version": proto.ir_version,
                "runtime": runtime,
                "runtime_version": result.get("version"),
                "loads": "top1" in result,
                "error": result.get("error"),
                "agreement": round(float(np.mean(np.array(result["top1"]) == expected)), 4)
                if "top1" in result
                else None,
                "images_compared": len(expected),
            }
            append_result("portability", f"python benchmarks/portability.py --venvs {args.venvs}", figures)


if __name__ == "__main__":
    main()
