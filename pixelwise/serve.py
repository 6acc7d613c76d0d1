"""`pixelwise serve`: a checkpoint or exported model behind HTTP, on LitServe (issue 28).

    POST /predict   the image file's bytes as the body (PNG, JPEG, TIFF, BMP), a multipart field `image`,
                    or JSON {"image": base64}; ?overlay=true adds the overlay; `Accept: image/png` returns a
                    semantic model's index PNG itself
    GET  /health    "ok" once the model is loaded
    GET  /info      model, classes, runtime, precision, input size rule, pixelwise version

Requests go through the same predictor as `pixelwise predict` (preprocessing, tiling, TTA, thresholds,
CRF), in LitServe's inference worker(s). The body is checked before the model sees it: bytes and pixels
are limited, and anything that is not a readable image gets a 4xx with a JSON message naming what was
wrong; the server reads nothing from a path in a request.
"""
from __future__ import annotations

import base64
import io
import json
import sys
import time
from urllib.parse import parse_qs

from pixelwise.errors import ConfigError

EXTRA = "pip install 'pixelwise[serve]'"
MAX_BYTES = 32 * 2**20  # a 16-bit 4096 x 4096 TIFF fits
MAX_PIXELS = 64 * 2**20
RAW_TYPES = ("image/", "application/octet-stream")


def _litserve():
    try:
        import litserve
    except ImportError:
        raise ConfigError(f"pixelwise serve needs the Python package 'litserve', which is not installed; install the "
                          f"serving extra: {EXTRA}") from None
    return litserve


def _error(status: int, message: str):
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=message)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """The image in `data` as a numpy array (H, W) or (H, W, C), or an HTTPException naming what is wrong."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not data:
        return _error(400, "the request has no image: send the image file's bytes as the body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                return _error(413, f"the image is {w} x {h} = {w * h} pixels; this server takes at most {max_pixels}")
            im.load()
            array = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "LA", "PA", "YCbCr") else im)
    except UnidentifiedImageError:
        return _error(415, f"the body ({len(data)} bytes) is not an image PIL can read (PNG, JPEG, TIFF, BMP)")
    except Image.DecompressionBombError as e:
        return _error(413, f"the image is too large to decode: {e}")
    except (OSError, ValueError, SyntaxError) as e:
        return _error(400, f"the image cannot be decoded ({len(data)} bytes): {' '.join(str(e).split())[:200]}")
    return array


class ImageBody:
    """ASGI middleware in front of LitServe: POST /predict bodies (raw image bytes, multipart `image`, or JSON)
    become JSON {"image": base64, "overlay", "accept"} of at most max_bytes; an API key is checked when set;
    one log line per request."""

    def __init__(self, app, max_bytes: int = MAX_BYTES, api_key: str | None = None, path: str = "/predict") -> None:
        self.app, self.max_bytes, self.api_key, self.path = app, max_bytes, api_key, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), {"code": 0, "bytes": 0}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, logged_send, status)
        finally:
            print(f"{scope.get('method', '')} {scope['path']} {status['code']} {status['bytes']} bytes "
                  f"{1000 * (time.monotonic() - start):.0f} ms", file=sys.stderr, flush=True)

    async def _handle(self, scope, receive, send, status):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] not in ("/health",) and headers.get("x-api-key") != self.api_key:
            return await _reply(send, 401, "missing or wrong X-API-Key header")
        if scope["path"] != self.path or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(send, 413, f"the body is {declared} bytes; this server takes at most {self.max_bytes}")
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _reply(send, 413, f"the body exceeds {self.max_bytes} bytes")
            if not message.get("more_body"):
                break
        status["bytes"] = len(body)
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        payload = {"overlay": query.get("overlay", ["false"])[0].lower() in ("1", "true", "yes"),
                   "accept": headers.get("accept", "")}
        if kind == "application/json":
            try:
                image = json.loads(body).get("image")
                base64.b64decode(image, validate=True)
            except Exception:
                return await _reply(send, 400, 'a JSON body must be {"image": "<the image file, base64>"}')
            payload["image"] = image
        elif kind == "multipart/form-data":
            data = await _form_image(scope, bytes(body))
            if data is None:
                return await _reply(send, 400, "a multipart body must have the image file in a field named 'image'")
            payload["image"] = base64.b64encode(data).decode()
        elif kind == "" or kind.startswith(RAW_TYPES):
            payload["image"] = base64.b64encode(bytes(body)).decode()
        else:
            return await _reply(send, 415, f"Content-Type {kind!r}: send the image file's bytes (image/png, "
                                           "image/jpeg, image/tiff, application/octet-stream), multipart or JSON")
        data = json.dumps(payload).encode()
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() not in
                                     (b"content-type", b"content-length")]
                     + [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())])
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}

        return await self.app(scope, replay, send)


async def _form_image(scope, body: bytes) -> bytes | None:
    from starlette.requests import Request

    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form()
        field = form.get("image")
        return None if field is None or isinstance(field, str) else await field.read()
    except Exception:
        return None


async def _reply(send, status: int, message: str) -> None:
    data = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


_API = None


def _api_class():
    """The LitAPI subclass, made on first use (litserve is an optional extra). LitServe pickles the API into its
    worker processes, so the class is found by name: pixelwise.serve.PixelwiseAPI (module __getattr__)."""
    global _API
    if _API is not None:
        return _API
    ls = _litserve()

    class PixelwiseAPI(ls.LitAPI):
        """The model is loaded in each inference worker (setup), through pixelwise.inference."""

        def setup(self, device):
            import contextlib

            from pixelwise.files import trusting_pickles
            from pixelwise.inference import build_inference

            o = self.options
            with trusting_pickles(o["checkpoint"]) if o["trust"] else contextlib.nullcontext():
                self.inference = build_inference(o["checkpoint"], runtime=o["runtime"], overrides=o["overrides"],
                                                 device=None if o["runtime"] in (None, "torch") else "cpu")

        def decode_request(self, request):
            from pixelwise.errors import PixelwiseError

            array = decode_image(base64.b64decode(request["image"]), self.options["max_pixels"])
            if not hasattr(array, "shape"):
                raise array
            try:  # read and checked as the predictor reads and checks it, before it joins a batch
                image = self.inference.predictor.read(array, "the request's image")
            except PixelwiseError as e:
                raise _error(422, str(e)) from None
            return {"image": image, "overlay": request.get("overlay", False), "accept": request.get("accept", "")}

        def predict(self, items):
            """One request (max_batch_size 1) or LitServe's batch of them: the predictor's `many` runs the images
            of one size together."""
            single = isinstance(items, dict)
            items = [items] if single else items
            results = self.inference.predictor.many([i["image"] for i in items])
            out = [dict(item, result=r) for item, r in zip(items, results)]
            return out[0] if single else out

        def encode_response(self, item):
            return encode(self.inference, item)

    PixelwiseAPI.__module__, PixelwiseAPI.__qualname__ = __name__, "PixelwiseAPI"
    _API = PixelwiseAPI
    return _API


def __getattr__(name: str):
    if name == "PixelwiseAPI":
        return _api_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_api(checkpoint: str, runtime: str | None, overrides: list[str], *, max_pixels: int, max_batch_size: int,
             batch_timeout: float, trust: bool = False):
    api = _api_class()(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
    api.options = {"checkpoint": str(checkpoint), "runtime": runtime, "overrides": list(overrides),
                   "max_pixels": max_pixels, "trust": trust}
    return api


def encode(inference, item: dict):
    """The answer to one request: the task's JSON (Task.answer), or with `Accept: image/png` a semantic model's
    index PNG itself."""
    out = inference.task.answer(inference.predictor, item["image"], item["result"], meta=inference.meta,
                                overlay=item["overlay"])
    if "image/png" in item["accept"] and "labels_png" in out and not item["overlay"]:
        from fastapi import Response

        return Response(content=base64.b64decode(out["labels_png"]), media_type="image/png")
    return out


def describe(checkpoint, runtime: str | None, overrides: list[str], trust: bool = False) -> dict:
    """What GET /info answers: model, task, classes, runtime, precision, input size rule, pixelwise version."""
    import contextlib

    from pixelwise.deploy.runtimes import default_runtime
    from pixelwise.files import trusting_pickles
    from pixelwise.inference import build_inference

    with trusting_pickles(checkpoint) if trust else contextlib.nullcontext():
        inference = build_inference(checkpoint, runtime=runtime, overrides=overrides, device="cpu")
    model, cfg = inference.model, inference.cfg
    rule = "any size"
    if hasattr(model, "input_size_for"):
        side = model.input_size_for(64)
        rule = f"sides model.input_size_for(n) (e.g. {side} in, {model.output_size(side)} out); others are tiled"
    return {"checkpoint": str(checkpoint), "model": cfg.model.name, "task": inference.task.name,
            "classes": list(inference.predictor.class_names or []), "runtime": runtime or default_runtime(checkpoint),
            "precision": inference.task.inference_precision()[0], "input_size_rule": rule,
            "overrides": overrides, "pixelwise": __import__("pixelwise").__version__}


def serve(checkpoint: str, *, runtime: str | None = None, overrides: list[str] = (), host: str = "127.0.0.1",
          port: int = 8000, workers: int = 1, max_batch_size: int = 1, batch_timeout: float = 0.0,
          api_key: str | None = None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
          trust: bool = False) -> None:
    """Run the server until SIGTERM / Ctrl-C (requests in flight are finished first)."""
    ls = _litserve()
    info = describe(checkpoint, runtime, list(overrides), trust)  # loads it once here: a bad file fails now, clearly
    api = make_api(str(checkpoint), runtime, list(overrides), max_pixels=max_pixels, max_batch_size=max_batch_size,
                   batch_timeout=batch_timeout, trust=trust)
    server = ls.LitServer(api, accelerator="auto" if runtime in (None, "torch") else "cpu",
                          workers_per_device=workers, model_metadata=info,
                          middlewares=[(ImageBody, {"max_bytes": max_bytes, "api_key": api_key})])
    url = f"http://{host}:{port}"
    print(f"pixelwise serve: {checkpoint} at {url} (POST /predict, GET /health, GET /info)\n"
          f"  try: curl --data-binary @image.png -H 'Content-Type: image/png' {url}/predict", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  bound to {host}: other machines can reach it; "
              + ("requests need the X-API-Key header" if api_key else "no API key is required (--api-key sets one)"),
              flush=True)
    _stop_on_sigterm(server.uvicorn_graceful_timeout)
    server.run(host=host, port=port, generate_client_file=False, log_level="warning")


def _stop_on_sigterm(grace: float) -> None:
    """SIGTERM stops the server as Ctrl-C does, after the requests in flight. Left to itself, a SIGTERM ends
    LitServe's main process alone and its worker processes keep running. Here the HTTP processes are stopped
    first (uvicorn stops accepting and finishes the requests in flight, for up to `grace` seconds) while the
    inference workers still answer them; then a KeyboardInterrupt runs LitServe's own shutdown of the rest."""
    import multiprocessing
    import os
    import signal

    main = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main:  # a process forked from this one inherited the handler: the default action
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        print("pixelwise serve: SIGTERM, finishing the requests in flight", file=sys.stderr, flush=True)
        http = [c for c in multiprocessing.active_children() if c.name.startswith("LitServer-")]
        for child in http:
            child.terminate()
        for child in http:
            child.join(timeout=grace + 5)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
