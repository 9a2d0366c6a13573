"""cifar serve as a real server process on a free port: the API with good, bad and concurrent
requests against `cifar predict`'s rows, the token, SIGTERM, and the page in a real browser."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.corpus import decompression_bomb, jpeg_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
CHROMIUM = "/usr/bin/chromium"


def start_server(*options, env=None):
    """A `cifar serve` process and its base URL, once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "cifarcli", "serve", "default", "--port", str(port), *options]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server did not start: {process.stderr.read()}")


def stop(process) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    process, url = start_server("--max-batch", "16", "--max-wait-ms", "50")
    yield url
    stop(process)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("upload")
    files = {}
    for index in range(6):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32 + 8 * index, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
        files[f"image{index}.png"] = buffer.getvalue()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def predicted_rows(images: dict[str, bytes], tmp_path) -> dict[str, dict]:
    """`cifar predict --json` rows of the same files, by file name."""
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    command = [
        sys.executable,
        "-m",
        "cifarcli",
        "predict",
        str(tmp_path),
        "--model",
        "default",
        "--top-k",
        "3",
        "--json",
    ]
    answer = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return {row["path"].rsplit("/", 1)[-1]: row for row in answer["rows"]}


def test_the_api_gives_predicts_rows_and_an_error_row_per_bad_file(server, images, tmp_path):
    bad = {"notes.txt": b"not an image", "cut.jpg": jpeg_bytes(Image.new("RGB", (64, 64)))[:200]}
    files = [("files", (name, data)) for name, data in {**images, **bad}.items()]
    answer = httpx.post(server + "/v1/predict?top_k=3", files=files, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = {row["path"]: row for row in answer.json()["rows"]}
    expected = predicted_rows(images, tmp_path)
    for name in images:
        assert rows[name]["label"] == expected[name]["label"]
        assert abs(rows[name]["confidence"] - expected[name]["confidence"]) < 1e-5
        assert [c["label"] for c in rows[name]["top_k"]] == [c["label"] for c in expected[name]["top_k"]]
    assert all(rows[name]["error"] and rows[name]["label"] is None for name in bad)
    raw = httpx.post(server + "/v1/predict", content=images["image0.png"], headers={"content-type": "image/png"})
    assert raw.json()["rows"][0]["label"] == expected["image0.png"]["label"]


def test_bad_requests_get_a_4xx_and_one_line(server, images, tmp_path):
    bomb = tmp_path / "bomb.png"
    decompression_bomb(bomb)
    cases = [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415),
        ({"files": [("files", (f"{i}.png", images["image0.png"])) for i in range(65)]}, 413),
        ({"content": b"\0" * (20 * 2**20 + 1), "headers": {"content-type": "image/png"}}, 413),
    ]
    for request, status in cases:
        answer = httpx.post(server + "/v1/predict", timeout=60, **request)
        assert answer.status_code == status, answer.text
        assert "\n" not in answer.json()["error"]
    assert (
        httpx.post(server + "/v1/predict?top_k=11", files=[("f", ("a.png", images["image0.png"]))]).status_code == 400
    )
    assert httpx.get(server + "/v1/predict").status_code == 405
    answer = httpx.post(server + "/v1/predict", files=[("f", ("bomb.png", bomb.read_bytes()))], timeout=60)
    assert answer.status_code == 200 and "decompression bomb" in answer.json()["rows"][0]["error"]
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}


def test_concurrent_requests_are_batched_together_and_each_gets_its_rows(server, images, tmp_path):
    expected = predicted_rows(images, tmp_path)
    names = list(images) * 8

    def one(name):
        answer = httpx.post(server + "/v1/predict", files=[("f", (name, images[name]))], timeout=60)
        return name, answer.status_code, answer.json()["rows"][0]["label"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, names))
    assert all(status == 200 and label == expected[name]["label"] for name, status, label in answers)
    metrics = httpx.get(server + "/metrics").text
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if not line.startswith("#"))
    assert float(values["cifar_batch_size_sum"]) > float(values["cifar_batch_size_count"])  # some batch held several
    model = httpx.get(server + "/v1/model").json()
    assert model["classes"][0] == "airplane" and model["input_size"] == 32


def test_a_token_guards_the_api_but_not_the_page(images):
    process, url = start_server("--token-env", "CIFAR_TOKEN", env={"CIFAR_TOKEN": "s3cret"})
    try:
        assert httpx.get(url + "/v1/model").status_code == 401
        assert httpx.get(url + "/v1/model", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/v1/model", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(url + "/").status_code == 200
    finally:
        stop(process)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(images):
    process, url = start_server()
    files = [("files", (f"{i}.png", images["image3.png"])) for i in range(64)]
    answers = []
    request = threading.Thread(target=lambda: answers.append(httpx.post(url + "/v1/predict", files=files, timeout=60)))
    request.start()
    time.sleep(0.05)
    assert stop(process) == 0
    request.join()
    assert answers[0].status_code == 200 and len(answers[0].json()["rows"]) == 64


def test_another_host_without_a_token_is_warned_of():
    process, _ = start_server("--host", "0.0.0.0")
    stop(process)
    assert "without --token-env" in process.stderr.read()


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no {CHROMIUM}: apt-get install -y chromium")
def test_the_page_in_a_real_browser_shows_each_images_class(server, images, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    expected = predicted_rows(images, tmp_path)
    chosen = list(images)[:3]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('card').textContent.includes('classes')")
        page.set_input_files("#files", [str(tmp_path / name) for name in chosen])
        page.wait_for_function("document.querySelectorAll('#results li').length === 3")
        shown = page.locator("[data-testid=label]").all_inner_texts()
        alts = [page.locator("#results img").nth(index).get_attribute("alt") for index in range(3)]
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert alts == chosen
    threshold = 0.5  # the page's default: below it an image is 'unsure'
    assert shown == [expected[n]["label"] if expected[n]["confidence"] >= threshold else "unsure" for n in chosen]
    assert (tmp_path / "page.png").stat().st_size > 0


def test_unknown_paths_and_methods_answer_json(server):
    assert httpx.get(server + "/nothing").json()["error"] == "GET /nothing: no such page"
    assert httpx.get(server + "/v1/predict").status_code == 405
    assert httpx.post(server + "/v1/predict").json()["error"] == "the body is empty; send an image"
