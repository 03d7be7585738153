"""serve.py's work: one model in memory behind FastAPI (docs/serve.md).

    GET  /          the upload page (serve_page.html: no build step, nothing from a CDN)
    GET  /health    the model's classes and input size
    POST /predict   multipart fields ``file``: {"predictions": [{file, label, score, probs}]}

Uploads are decoded as predict.py decodes files (the same pixel limit on decompression bombs);
a request with something that is no image, too large or none at all gets a 4xx JSON
``{"error": ...}`` and the server serves on. Inference runs on a worker thread, one request
at a time, so the event loop keeps answering (/health, the page) while a batch is predicted.
The server reads only the bytes a client sends, never a path it names.
"""
import io
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .api import Classifier
from .cli import DEVICE_HELP
from .data.images import as_rgb
from .errors import Coco4Error
from .options import check, option
from .predictor import TTA_MODES, calibration_option, checkpoint_option

PAGE = Path(__file__).with_name("serve_page.html")
MAX_FILES = 64  # images one request may hold (more: a 400)
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")  # a phone's MPO opens as JPEG


@dataclass(frozen=True)
class ServeOptions:
    """serve.py's flags."""

    checkpoint: Path = checkpoint_option()
    host: str = option("127.0.0.1", "the address to listen on: this machine only by default; "
                       "0.0.0.0 for every network it is on")
    port: int = option(8000, "the port to listen on", low=1, high=65535)
    device: str = option("auto", DEVICE_HELP)
    calibration: bool = calibration_option()
    tta: str = option("none", "test-time augmentation: flip averages each image and its mirror",
                      choices=TTA_MODES)
    max_upload_mb: float = option(20.0, "the most one request may upload, in MiB (413 above)",
                                  above=0)

    def __post_init__(self):
        check(self)


def serve(opts: ServeOptions) -> int:
    """Load the checkpoint, then answer requests until Ctrl-C or SIGTERM: 0 once stopped."""
    import uvicorn

    classifier = Classifier.load(opts.checkpoint, opts.device, opts.tta, opts.calibration)
    app = create_app(classifier, opts.max_upload_mb)
    print(f"serving {opts.checkpoint} ({', '.join(classifier.classes)}) on "
          f"http://{opts.host}:{opts.port}/ ; Ctrl-C stops it", flush=True)
    # a client that never finishes its upload must not hold a stop (systemctl, docker) open
    server = uvicorn.Server(uvicorn.Config(app, host=opts.host, port=opts.port,
                                           log_level="info", timeout_graceful_shutdown=5))
    # uvicorn stops gracefully on either signal, then raises it again for the handler it
    # found: these note it, so the stop is an exit 0, not an error
    stops = []
    previous = {s: signal.signal(s, lambda signum, frame: stops.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to a port it cannot bind, after logging why
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:
        raise Coco4Error(f"could not listen on {opts.host}:{opts.port} (in use, or not an "
                         "address of this machine; uvicorn's message is above): pick another "
                         "--port or --host")
    print("stopped", flush=True)
    return 0


class BadUpload(Exception):
    """What is wrong with a request, and the HTTP status that says so."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(classifier: Classifier, max_upload_mb: float = 20.0) -> FastAPI:
    """The app serving ``classifier``; a request's files may hold ``max_upload_mb`` MiB."""
    app = FastAPI(title="coco4", docs_url=None, redoc_url=None, openapi_url=None)
    limit = int(max_upload_mb * 2**20)
    # the body: the files and their multipart headers, counted as it arrives
    app.add_middleware(BodyLimit, limit=limit + 2**16, flag=f"{max_upload_mb:g}")
    one_at_a_time = threading.Lock()
    page = PAGE.read_text(encoding="utf-8")

    def classify(uploads: list[tuple[str, bytes]]) -> list:
        """On a worker thread, one request at a time: each upload decoded, predicted and let
        go before the next, so memory holds one decoded image, and the event loop none."""
        with one_at_a_time:  # decoded one by one as the batches fill: one image held at once
            return classifier.predict(decode(data, name) for name, data in uploads)

    @app.exception_handler(BadUpload)
    async def bad_upload(request: Request, error: BadUpload):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)  # a malformed form, too many files, 404
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=error.headers)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "classes": classifier.classes,
                "input_size": classifier.image_size, "tta": classifier.predictor.tta,
                "temperature": classifier.predictor.temperature}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            uploads = await uploaded_files(request, limit, f"{max_upload_mb:g}")
        except ClientDisconnect:  # gone mid-upload: nobody to answer, nothing to log
            return JSONResponse({"error": "the client disconnected"}, status_code=400)
        results = await run_in_threadpool(classify, uploads)
        return {"predictions": [{"file": name, "label": r.label, "score": r.score,
                                 "probs": r.probs} for (name, _), r in zip(uploads, results)]}

    return app


class BodyLimit:
    """ASGI middleware refusing a request body over ``limit`` bytes: by its Content-Length
    before a byte is read, or, sent in chunks without one, as soon as the bytes received pass
    it, before the form parser stores more of them."""

    def __init__(self, app, limit: int, flag: str):
        self.app, self.limit, self.flag = app, limit, flag

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            answer = JSONResponse({"error": f"the request body is {int(length) / 2**20:.1f} MiB, "
                                   f"over --max-upload-mb {self.flag}"}, status_code=413)
            return await answer(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # raised in the endpoint's read: its handler answers
                raise BadUpload(413, f"the request body is over --max-upload-mb {self.flag}")
            return message

        await self.app(scope, counted, send)


async def uploaded_files(request: Request, limit: int, flag: str) -> list[tuple[str, bytes]]:
    """The request's ``file`` fields as (name, bytes), or a BadUpload saying what is wrong:
    not multipart, no file, the files over the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadUpload(415, "POST images as multipart/form-data fields named 'file'")
    form = await request.form(max_files=MAX_FILES)
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise BadUpload(400, "no image in the request: POST multipart fields named 'file'")
    uploads, total = [], 0
    for upload in files:
        data = await upload.read(limit + 1)
        total += len(data)
        if total > limit:
            raise BadUpload(413, f"the files uploaded are over --max-upload-mb {flag}")
        uploads.append((upload.filename or "upload", data))
    return uploads


def decode(data: bytes, name: str) -> Image.Image:
    """An uploaded file decoded as predict.py decodes a file (upright, 8 bits, RGB), in one
    of the common photo formats only (no format that hands the bytes to another program, as
    EPS does to Ghostscript), within the pixel limit predict.py keeps."""
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as image:
            return as_rgb(image, name)
    except Image.DecompressionBombError as e:
        raise BadUpload(413, f"{name}: {e}") from None
    except UnidentifiedImageError:
        raise BadUpload(415, f"{name} is not an image in a format this server reads "
                        f"({', '.join(UPLOAD_FORMATS)})") from None
    except Exception as e:  # decoders fail in many ways: one upload is unusable, not the server
        raise BadUpload(415, f"{name} is not an image this server can read "
                        f"({type(e).__name__}: {e})") from None
