"""`cifar serve`: a model over HTTP (Starlette and uvicorn, the `serve` extra; never torch).

    GET  /             the page (assets/page.html): drop images, see classes, download a CSV
    POST /v1/predict   images as multipart files, or one raw image body -> predict --json's rows
    GET  /v1/model     the model card
    GET  /healthz      {"status": "ok"}
    GET  /metrics      Prometheus text (batcher.ServerMetrics)

Each request's images are decoded in a thread pool and classified by the Batcher with other
requests' images. Bad input is a row with an error or a 4xx JSON body with a one-line message;
a request never names a server path or URL. With a token, every request but the page and
/healthz must send `Authorization: Bearer <token>`.
"""

import asyncio
import contextlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cifarcli.batcher import Batcher, Overloaded, ServerMetrics
from cifarcli.batches import decode, label_row
from cifarcli.errors import CifarError, ImageDecodeError
from cifarcli.rows import Row, row_to_dict

PAGE = Path(__file__).parent / "assets" / "page.html"
MAX_FILES = 64  # images in one request
MAX_FILE_BYTES = 20 * 1024 * 1024  # one image
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a whole request body
RETRY_AFTER_S = 1
# Smaller images decode on the event loop: handing one to a thread costs more than decoding it.
INLINE_DECODE_BYTES = 16 * 1024
RAW_TYPES = ("image/", "application/octet-stream")
OPEN_PATHS = ("/", "/healthz")  # answered without the token: the page asks for it


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def query_options(query, classes: int) -> tuple[int, float]:
    """(top_k, min_confidence) from the query string, or a 400 naming the parameter."""
    try:
        top_k = int(query.get("top_k", 1))
        min_confidence = float(query.get("min_confidence", 0))
    except ValueError:
        raise RequestError(400, "top_k must be a whole number and min_confidence a number") from None
    if not 1 <= top_k <= classes:
        raise RequestError(400, f"top_k {top_k}: choose 1 to {classes}, the model's classes")
    if not 0 <= min_confidence <= 1:
        raise RequestError(400, f"min_confidence {min_confidence}: choose a number from 0 to 1")
    return top_k, min_confidence


async def uploaded_images(request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image a request sends, or a RequestError (400, 413, 415)."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
        raise RequestError(413, f"the request is over {MAX_REQUEST_BYTES // 2**20} MB; send fewer or smaller images")
    kind = request.headers.get("content-type", "")
    if not kind and length in (None, "0"):
        raise RequestError(400, "the body is empty; send an image")
    if kind.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_FILES, max_part_size=MAX_FILE_BYTES)
        except (MultiPartException, HTTPException) as error:  # starlette gives the parser's as an HTTPException
            said = str(getattr(error, "detail", error))
            too_many, too_large = "Too many files" in said, "size" in said
            message = f"more than {MAX_FILES} files; send them in several requests" if too_many else said
            raise RequestError(413 if too_many or too_large else 400, message) from None
        files = [value for _, value in form.multi_items() if hasattr(value, "read")]
        if not files:
            raise RequestError(400, "the form holds no files; send images as multipart files")
        images = []
        for upload in files:
            data = await upload.read()
            if len(data) > MAX_FILE_BYTES:
                raise RequestError(413, f"{upload.filename}: over {MAX_FILE_BYTES // 2**20} MB")
            images.append((upload.filename or "upload", data))
        return images
    if not kind.startswith(RAW_TYPES):
        raise RequestError(415, f"content type '{kind or 'none'}': send multipart files or an image body")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_FILE_BYTES:
            raise RequestError(413, f"the image is over {MAX_FILE_BYTES // 2**20} MB")
    if not data:
        raise RequestError(400, "the body is empty; send an image")
    return [("body", bytes(data))]


def build_app(classifier, max_batch: int = 32, max_wait_ms: float = 5, threads: int = 2, token: "str | None" = None):
    """The Starlette application serving this ONNX classifier."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    metrics = ServerMetrics(max_batch)
    decoding = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    classes, size = classifier.info.classes, classifier.info.input_size
    state = {}

    async def classify(name: str, data: bytes, top_k: int, min_confidence: float) -> Row:
        loop, batcher = asyncio.get_running_loop(), state["batcher"]
        batcher.incoming += 1
        try:
            if len(data) < INLINE_DECODE_BYTES:
                pixels = decode(data, name, size)
            else:
                pixels = await loop.run_in_executor(decoding, decode, data, name, size)
        except ImageDecodeError as error:
            metrics.image_errors += 1
            return Row(name, error=str(error).removeprefix(f"{name}: "))
        finally:
            batcher.incoming -= 1
        probabilities = await batcher.submit(pixels)
        metrics.images += 1
        return label_row(Row(name), probabilities, classes, top_k, min_confidence)

    async def predict(request):
        top_k, min_confidence = query_options(request.query_params, len(classes))
        images = await uploaded_images(request)
        rows = await asyncio.gather(*(classify(name, data, top_k, min_confidence) for name, data in images))
        return JSONResponse({"model": Path(classifier.source).name, "rows": [row_to_dict(r, top_k) for r in rows]})

    async def guarded(request):
        started = time.perf_counter()
        if token and request.url.path not in OPEN_PATHS:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return done(JSONResponse({"error": "send Authorization: Bearer <token>"}, 401), started)
        try:
            response = await ROUTES[request.url.path](request)
        except RequestError as error:
            response = JSONResponse({"error": str(error)}, error.status)
        except Overloaded:
            message = "the server is busy; retry shortly"
            response = JSONResponse({"error": message}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return done(response, started)

    def done(response, started: float):
        metrics.request_done(response.status_code, time.perf_counter() - started)
        return response

    async def page(request):
        return FileResponse(PAGE, media_type="text/html; charset=utf-8")

    async def model_card(request):
        return JSONResponse({"file": Path(classifier.source).name, **classifier.info.to_dict()})

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def prometheus(request):
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    ROUTES = {"/": page, "/v1/predict": predict, "/v1/model": model_card, "/healthz": health, "/metrics": prometheus}
    methods = {"/v1/predict": ["POST"]}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = Batcher(classifier, max_batch, max_wait_ms, metrics)
        state["batcher"].start()
        yield
        await state["batcher"].stop()
        decoding.shutdown(wait=False)

    async def not_routed(request, error):  # an unknown path or method: JSON too, and counted
        message = f"{request.method} {request.url.path}: " + (
            "no such page" if error.status_code == 404 else "not allowed"
        )
        return done(JSONResponse({"error": message}, error.status_code), time.perf_counter())

    routes = [Route(path, guarded, methods=methods.get(path, ["GET"])) for path in ROUTES]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_routed, 405: not_routed})


DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS = 32, 5.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise CifarError(
                f"--host {host} --port {port}: cannot listen there ({error.strerror}); choose another"
            ) from None


def serve(
    model=None, host=None, port=None, max_batch=None, max_wait_ms=None, threads=None, token_env=None, on_note=print
):
    """Serve the model (the bundled choice by default) until Ctrl-C or SIGTERM, which finish
    the requests in flight first. on_note(line) hears what a user should know."""
    import os

    from cifarcli.bundled import bundled_or_path, choose_bundled_model
    from cifarcli.classifier import OnnxClassifier
    from cifarcli.hardware import cores

    try:
        import uvicorn
    except ImportError:
        raise CifarError("cifar serve needs the serve extra: pip install 'cifarcli[serve]'") from None
    host, port = host or DEFAULT_HOST, DEFAULT_PORT if port is None else port
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise CifarError(f"--token-env {token_env}: the variable is empty or not set; export the token in it")
    elif host not in LOOPBACK:
        on_note(f"warning: serving on {host} without --token-env: anyone who reaches this port can use the model")
    path = bundled_or_path(model) if model else choose_bundled_model(None)[0]
    if path.suffix.lower() != ".onnx":
        raise CifarError(f"{path}: serve runs an .onnx model; export the checkpoint with `cifar export {path}`")
    classifier = OnnxClassifier(path, threads=threads or cores())
    check_port_free(host, port)
    batch = max_batch or DEFAULT_MAX_BATCH
    wait = DEFAULT_MAX_WAIT_MS if max_wait_ms is None else max_wait_ms
    app = build_app(classifier, batch, wait, threads or cores(), token)
    on_note(f"serving {path.name} at http://{host}:{port} (batches of up to {batch}, {wait:g} ms); Ctrl-C stops")
    logging.getLogger("python_multipart").setLevel(
        logging.ERROR
    )  # a malformed form is the client's 400, not a log line
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    graceful_server(uvicorn.Server)(config).run()


def graceful_server(server_class):
    """uvicorn's Server, except that Ctrl-C and SIGTERM end it with exit 0 once the requests in
    flight are answered (uvicorn raises the signal again at the end, which kills the process)."""

    class GracefulServer(server_class):
        @contextlib.contextmanager
        def capture_signals(self):
            import signal

            previous = {number: signal.signal(number, self.handle_exit) for number in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for number, handler in previous.items():
                    signal.signal(number, handler)

    return GracefulServer
