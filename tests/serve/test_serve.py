"""`pixelwise serve` on a free loopback port with a tiny U-Net: answers, batches, bad inputs, shutdown; the
Mask R-CNN answers through the same API in process."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from helpers.synthetic import Disks, write_split
from pixelwise.cli import main
from pixelwise.inference import load_predictor


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str | None = "image/png", headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers or {}))
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    write_split(tmp / "data" / "disks" / "train", Disks(4, size=64, seed=0))
    write_split(tmp / "data" / "disks" / "val", Disks(2, size=64, seed=1))
    recipe = tmp / "unet.yaml"
    recipe.write_text(f"""output_dir: {tmp / 'run'}
model: {{name: unet_padded, num_classes: 2, args: {{base_width: 4, depth: 2, in_channels: 1}}}}
data: {{dataset: folder, root: {tmp / 'data'}, path: disks, num_classes: 2, mean: [0.5], std: [0.25]}}
train: {{batch_size: 2, max_steps: 2, val_every: 2, lr: 0.01, optimizer: adam, threads: 2}}
""")
    assert main(["train", str(recipe)]) == 0
    port = _port()
    process = subprocess.Popen([sys.executable, "-m", "pixelwise", "serve", "--checkpoint", str(tmp / "run" / "best.pt"),
                                "--port", str(port), "--max-pixels", "20000", "--max-bytes", "100000",
                                "--max-batch-size", "2", "--batch-timeout", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        assert process.poll() is None, process.stdout.read()
    else:
        process.kill()
        pytest.fail("the server did not come up in 120 s: " + process.stdout.read())
    yield url, tmp, process
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the server and LitServe's worker processes, if any are left
    except ProcessLookupError:
        pass


def test_answers_are_the_in_process_predictors(server):
    url, tmp, _ = server
    image = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    status, body, kind = _post(f"{url}/predict", _png(image))
    assert status == 200 and kind.startswith("application/json"), body
    answer = json.loads(body)
    labels = np.array(Image.open(io.BytesIO(base64.b64decode(answer["labels_png"]))))
    want = load_predictor(tmp / "run" / "best.pt")(image).numpy()
    assert answer["height"] == 64 and answer["width"] == 80 and np.array_equal(labels, want)
    status, body, kind = _post(f"{url}/predict?overlay=true", _png(image))
    assert status == 200 and "overlay_png" in json.loads(body)
    status, body, kind = _post(f"{url}/predict", _png(image), headers={"Accept": "image/png"})
    assert status == 200 and kind == "image/png" and np.array_equal(np.array(Image.open(io.BytesIO(body))), want)
    with urllib.request.urlopen(f"{url}/info", timeout=10) as r:
        info = json.loads(r.read())["model"]
    assert info["model"] == "unet_padded" and info["task"] == "semantic" and info["runtime"] == "torch"


def test_bad_input_gets_a_4xx_naming_it_and_the_next_request_is_served(server):
    url, _, process = server
    good = _png((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8))
    cases = [
        (b"this is not an image", "image/png", 415, "not an image"),
        (good[: len(good) // 2], "image/png", 400, "cannot be decoded"),
        (b"", "image/png", 400, "no image"),
        (good, "text/plain", 415, "Content-Type 'text/plain'"),
        (_png(np.zeros((200, 200), np.uint8)), "image/png", 413, "at most 20000"),
        (b"\\0" * 200_000, "application/octet-stream", 413, "at most 100000"),
        (_png(np.zeros((64, 64), np.uint16) + 300), "image/png", 422, "uint16"),
    ]
    for body, kind, code, words in cases:
        status, answer, _ = _post(f"{url}/predict", body, kind)
        assert status == code, (words, status, answer)
        assert words in json.loads(answer)["detail"], (words, answer)
        assert _post(f"{url}/predict", good)[0] == 200, words
    assert process.poll() is None


def test_requests_of_one_size_are_batched_and_answered_as_alone(server):
    from concurrent.futures import ThreadPoolExecutor

    url, tmp, _ = server
    rng = np.random.default_rng(2)
    images = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda im: _post(f"{url}/predict", _png(im)), images))
    predictor = load_predictor(tmp / "run" / "best.pt")
    for image, (status, body, _) in zip(images, answers):
        assert status == 200, body
        labels = np.array(Image.open(io.BytesIO(base64.b64decode(json.loads(body)["labels_png"]))))
        assert np.array_equal(labels, predictor(image).numpy())


def test_sigterm_finishes_the_request_in_flight_then_stops_every_process(server):
    """Runs last: it stops the module's server. A lone request waits up to --batch-timeout (0.5 s) for a batch
    partner, so it is still in flight when the SIGTERM lands."""
    import threading

    url, _, process = server
    answer = {}
    body = _png(np.zeros((64, 64), np.uint8))
    client = threading.Thread(target=lambda: answer.update(r=_post(f"{url}/predict", body)))
    client.start()
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    client.join(timeout=60)
    assert answer["r"][0] == 200, answer
    assert process.wait(timeout=60) is not None
    log = process.stdout.read()
    assert "SIGTERM" in log and log.index("SIGTERM") < log.rindex("POST /predict 200"), log
    for _ in range(100):  # no process of the server is left (the resource tracker goes last, once it sees EOF)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the server are still running 10 s after it exited")


def test_mask_rcnn_answers_coco_style_detections_through_the_same_api(tmp_path):
    """The instance family through the server's own LitAPI (decode, batched predict, encode), in process."""
    from helpers.synthetic import Boxes, instance_config, instance_data

    from pixelwise.engine import train
    from pixelwise.metrics.coco import masks_to_rle
    from pixelwise.serve import make_api

    train(instance_config(tmp_path / "run", "model.args.box_score_thresh=0.0"), datasets=instance_data(),
          progress=False)
    api = make_api(str(tmp_path / "run" / "last.pt"), None, [], max_pixels=10**6, max_batch_size=2, batch_timeout=0)
    api.setup("cpu")
    image = (Boxes(1, seed=5).samples[0][0].transpose(1, 2, 0) * 255).astype(np.uint8)
    request = {"image": base64.b64encode(_png(image)).decode(), "overlay": True}
    answers = [api.encode_response(x) for x in api.predict([api.decode_request(request)] * 2)]
    want = load_predictor(tmp_path / "run" / "last.pt")(image)
    assert len(want["boxes"]) > 0
    for answer in answers:
        found = answer["instances"]
        assert [d["label"] for d in found] == want["labels"].tolist()
        assert np.allclose([d["box"] for d in found], want["boxes"].numpy(), atol=1e-3)
        assert [d["segmentation"] for d in found] == masks_to_rle(want["masks"])
        assert [d["class_name"] for d in found] == want["class_names"]
        assert answer["height"] == image.shape[0] and "overlay_png" in answer
    with pytest.raises(Exception) as bad:
        api.decode_request({"image": base64.b64encode(b"not an image").decode()})
    assert getattr(bad.value, "status_code", None) == 415


def test_without_litserve_the_error_names_the_extra(monkeypatch):
    import builtins

    from pixelwise.errors import ConfigError
    from pixelwise.serve import _litserve

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "litserve" else real(name, *a, **k))
    with pytest.raises(ConfigError, match=r"pip install 'pixelwise\[serve\]'"):
        _litserve()
