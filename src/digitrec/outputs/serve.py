"""The draw-a-digit web app: one page and a small JSON API over a finished run.

`digitrec serve RUN` listens on 127.0.0.1:8000 unless told otherwise. Safe by default on a shared
network: every request body is capped (413 before it is buffered), every error is JSON with a
one-line `detail` (bad input is a 400/422, never a 500), uploads are read in memory with the same
preprocessing as `digitrec predict` and never written to disk, and the page runs under a strict
Content-Security-Policy (no inline script, nothing from another origin; the API docs are served
from local copies of Swagger UI, so everything works offline).
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import torch
from fastapi import File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from ..core import pretrained as bundled
from ..core.files import InputError
from ..core.metrics import check_min_confidence
from ..core.rundir import Run
from ..nets.weights import load_pretrained, load_run_model
from .export import OnnxClassifier
from .images import NO_DIGIT, open_image, to_mnist

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a drawn PNG is ~20 KB, a scanned digit well under this

# The page loads only its own files; canvas pixels are read with getImageData, so no data: URLs.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


# ---------------------------------------------------------------------------------------------
# request and response bodies


def pixels_to_image(pixels: list) -> np.ndarray:
    """784 values or 28 rows of 28, each a number in 0..255 -> (28, 28) uint8 (rounded)."""
    try:
        x = np.asarray(pixels)
    except (ValueError, TypeError, OverflowError):  # ragged rows, nesting too deep
        raise ValueError("must be 784 numbers or 28 rows of 28 numbers (ragged or nested input)") from None
    if x.shape not in ((784,), (28, 28)):
        raise ValueError(f"must be 784 numbers or 28 rows of 28 numbers, got shape {list(x.shape)}")
    if x.dtype == object and all(type(v) in (int, float) for v in x.flat):
        raise ValueError("must be in 0..255")  # numpy keeps numbers as objects only past 64-bit range
    if x.dtype.kind not in "iuf":
        raise ValueError("must be numbers (not strings, booleans or null)")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 255:
        raise ValueError("must be in 0..255")
    return np.rint(x).astype(np.uint8).reshape(28, 28)


class PixelsIn(BaseModel):
    pixels: Annotated[list[Any], AfterValidator(pixels_to_image)] = Field(
        description="784 values 0..255 in row-major order, or a 28x28 array: white ink on black, "
                    "already MNIST-like (taken as given, no cropping or centring)",
        examples=[[0] * 784])


def read_pixels_body(body: bytes, content_type: str) -> np.ndarray:
    """A /api/predict/pixels body -> (28, 28) uint8, with FastAPI's own error messages.

    Parsed by hand rather than by FastAPI's body machinery, which costs several thread-pool hops
    per request: orjson first; on its failure Python's json, which also reads NaN and Infinity
    (then refused as out of range) and words its errors as FastAPI does.
    """
    not_an_object = RequestValidationError([{"type": "model_attributes_type", "loc": ("body",),
                                             "msg": "Input should be a valid dictionary or object to extract fields from"}])
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    media_type = content_type.split(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not (
            media_type.startswith("application/") and media_type.endswith("+json")):
        raise not_an_object  # as FastAPI: JSON is read when declared so, or when nothing is declared
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            position = getattr(e, "pos", getattr(e, "start", 0))
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", position), "msg": "JSON decode error",
                                           "ctx": {"error": getattr(e, "msg", getattr(e, "reason", str(e)))}}]) from None
    if not isinstance(data, dict):
        raise not_an_object
    try:
        return PixelsIn.model_validate(data).pixels
    except ValidationError as e:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in e.errors()]) from None


def json_response(content) -> Response:
    """A JSON response written by orjson; numpy arrays go in as they are."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


class Prediction(BaseModel):
    label: int | None = Field(description="the most probable digit; null when it is not sure (below min_confidence)")
    best_guess: int = Field(description="the most probable digit, sure or not")
    confidence: float = Field(description="its probability")
    unsure: bool = Field(description="true when confidence is below the request's min_confidence")
    probabilities: list[float] = Field(description="10 class probabilities (softmax), summing to 1")
    image: list[list[int]] = Field(description="the 28x28 image the model saw, 0..255, white on black")


# Taken as text and checked by metrics.check_min_confidence, so every interface words a bad value alike.
MinConfidence = Annotated[str | None, Query(
    description="answer only at this probability or above (0..1): below it `label` is null and `unsure` true")]


def _threshold(min_confidence: str | None) -> float | None:
    """The request's min_confidence, checked: a bad one is a 422 with one line."""
    if min_confidence is None:
        return None
    try:
        return check_min_confidence(min_confidence)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


class Health(BaseModel):
    status: str


# ---------------------------------------------------------------------------------------------
# middleware


class BodyLimit:
    """Answer 413 to a request body over `max_bytes`, counted as it arrives, before anything buffers it.

    A declared Content-Length over the limit is refused without reading a byte; a chunked body is
    cut off at the first chunk that crosses it.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"request body too large: the limit is {max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self._refuse(send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # starlette's HTTPException passes through FastAPI's body parsing unchanged
                raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send):
        response = JSONResponse({"detail": self.detail}, status_code=413, headers={"Connection": "close"})
        await response({"type": "http"}, None, send)


class SecurityHeaders:
    """nosniff and no-referrer on every response; the strict CSP on everything but the API docs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Swagger UI's page starts itself with an inline script: it gets the default policy
        docs = scope["path"] == "/docs" or scope["path"].startswith("/static-offline-docs")
        extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        if not docs:
            extra.append((b"content-security-policy", PAGE_CSP.encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------------------------
# errors: always JSON with a one-line `detail`


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            parts.append(f"malformed JSON at character {error['loc'][-1]}: {error.get('ctx', {}).get('error', '')}")
            continue
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(InputError)
    async def input_error(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(request, exc):  # a bug, not bad input: keep the reply JSON and vague
        return JSONResponse({"detail": "internal error"}, status_code=500)


# ---------------------------------------------------------------------------------------------
# the app


def model_info(run_dir: Path, cfg, model: torch.nn.Module) -> dict:
    """What /api/model reports: the run, its model, and the best accuracy figure the run holds."""
    run = Run(run_dir)
    metrics, headline = run.metrics(), run.headline()
    return {
        "run": run_dir.resolve().name,
        "preset": cfg.preset,
        "model": metrics.get("model", cfg.model),  # "ensemble of K (...)" for an ensemble run
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy": headline["accuracy"],
        "accuracy_on": headline["on"],  # "test" (evaluation_test.json), "validation", or None
        "accuracy_n": headline["n"],
        # what was trained and how well; not the machine it ran on (CPU, platform, git commit)
        "metrics": {key: value for key, value in metrics.items() if key != "environment"},
    }


def pretrained_info(name: str, cfg, model: torch.nn.Module) -> dict:
    """What /api/model reports for a model that ships with digitrec: model_info's fields, from models.json."""
    card = bundled.card(name)
    return {
        "run": f"pretrained:{name}",
        "preset": cfg.preset,
        "model": card.get("model") or cfg.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy": card["test"]["accuracy"],
        "accuracy_on": "test",
        "accuracy_n": card["test"]["n"],
        "metrics": {key: value for key, value in card.items() if key not in ("environment", "files")},
    }


def create_app(run_dir: str | os.PathLike | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               pretrained: str = bundled.DEFAULT):
    """The FastAPI app serving the run in `run_dir` (None: the bundled model `pretrained`); raises
    InputError if the model cannot be loaded."""
    if max_body_bytes > MultiPartParser.spool_max_size:
        # above this, the multipart parser would spool an upload to a temporary file on disk
        raise ValueError(f"max_body_bytes must be at most {MultiPartParser.spool_max_size}")
    if run_dir is None:
        model, cfg, _ = load_pretrained(pretrained)
        info = {**pretrained_info(pretrained, cfg, model), "max_body_bytes": max_body_bytes}
    else:
        run_dir = Path(run_dir)
        model, cfg, _ = load_run_model(run_dir)
        info = {**model_info(run_dir, cfg, model), "max_body_bytes": max_body_bytes}
    # onnxruntime runs one `fast` image in ~0.1 ms where torch's eager modules take ~0.45 ms. One
    # thread: one image is too little work to split across cores (on the shared 2-core machine a
    # batch-1 forward took ~90 ms with 2 threads spinning for a busy core); concurrent uploads use
    # the cores instead, each decoded in its own thread.
    engine = OnnxClassifier.from_model(model, threads=1)
    # Uploads are decoded by one thread per core: decoding is CPU-bound, so more would not answer
    # sooner, and memory stays bounded. A ~70 KB PNG can hold a 40-megapixel image that takes
    # ~0.5 GB while it is read, and the allocator keeps each decoding thread's peak: decoded in
    # FastAPI's pool of 40 threads, 24 such uploads at once took the server from 0.5 GB to a peak
    # of 10 GB; one thread per core, 1.5 GB on 2 cores (`benchmarks/fuzz.py --heavy 24`).
    decoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="digitrec-decode")

    def read_upload(data: bytes, name: str) -> np.ndarray | None:
        return to_mnist(open_image(data, name), engine.predict_probs)  # strokes in doubt: the surest reading

    def classify(image: np.ndarray, min_confidence: float | None) -> Response:
        """One (28, 28) uint8 image -> a Prediction: label (None below `min_confidence`), probabilities
        and the image itself."""
        probs = engine.predict_probs(image[None])[0]  # (10,)
        best = int(probs.argmax())
        unsure = min_confidence is not None and bool(probs[best] < min_confidence)
        return json_response({"label": None if unsure else best, "best_guess": best, "confidence": float(probs[best]),
                              "unsure": unsure, "probabilities": probs, "image": image})

    app = FastAPIOffline(title="digitrec", version="1", redoc_url=None,
                         description=f"Handwritten-digit recognition with run `{info['run']}`.")
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=Health)
    def healthz():
        return Health(status="ok")

    @app.get("/api/model", summary="The loaded model: run, preset, parameters, accuracy, metrics.json")
    def api_model() -> dict:
        return info

    @app.post("/api/predict", summary="Classify an image file (PNG, JPEG, ...)", response_model=Prediction,
              responses={400: {"description": "not a readable image, too many pixels, or no digit in it"},
                         413: {"description": "body over the limit"},
                         422: {"description": "a bad min_confidence"}})
    async def api_predict(file: Annotated[UploadFile, File(description="the image; any size up to the body limit")],
                          min_confidence: MinConfidence = None):
        threshold = _threshold(min_confidence)
        name = Path(file.filename or "upload").name[:100]
        image = await asyncio.wrap_future(decoder.submit(read_upload, await file.read(), name))
        if image is None:
            raise InputError(f"{name}: {NO_DIGIT}")
        return classify(image, threshold)

    @app.post("/api/predict/pixels", summary="Classify a 28x28 image given as pixel values",
              response_model=Prediction, responses={422: {"description": "malformed JSON or pixels, or a bad min_confidence"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PixelsIn.model_json_schema()}}}})
    async def api_predict_pixels(request: Request, min_confidence: MinConfidence = None):
        # async and inline: the whole request is well under a millisecond of CPU, less than a
        # thread-pool hop costs when the cores are busy
        threshold = _threshold(min_confidence)
        return classify(read_pixels_body(await request.body(), request.headers.get("content-type", "")), threshold)

    return app


RUN_ENV = "DIGITREC_SERVE_RUN"  # how `serve` tells uvicorn's worker processes which run to load
PRETRAINED_ENV = "DIGITREC_SERVE_PRETRAINED"  # ... or, without a run, which bundled model


def app_from_environment():
    """The app each uvicorn worker process builds, for the run named in $DIGITREC_SERVE_RUN."""
    torch.set_num_threads(1)  # torch only loads the run; onnxruntime answers, one thread a process
    return create_app(os.environ.get(RUN_ENV) or None, pretrained=os.environ.get(PRETRAINED_ENV, bundled.DEFAULT))


def serve(run_dir: str | os.PathLike | None, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          pretrained: str = bundled.DEFAULT) -> None:
    """Run the app under uvicorn until interrupted, in `workers` processes sharing the port.

    One process answers on one core (Python's GIL); a second one doubles the pixels endpoint's
    throughput on a 2-core machine (see benchmarks/serve_load.py).
    """
    import uvicorn  # the server itself: not needed to build the app (tests, ASGI hosts)

    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    os.environ[RUN_ENV] = str(Path(run_dir).resolve()) if run_dir is not None else ""
    os.environ[PRETRAINED_ENV] = pretrained
    app = app_from_environment()  # a bad run fails here, once, before any worker starts
    print(f"serving {run_dir if run_dir is not None else 'pretrained:' + pretrained} on http://{host}:{port}/ with {workers} worker process(es) "
          f"(API docs at /docs); Ctrl-C stops", flush=True)
    options = {"host": host, "port": port, "log_level": "warning", "server_header": False}
    if workers == 1:
        uvicorn.run(app, **options)
    else:
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
