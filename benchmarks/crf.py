"""The fully connected CRF's two backends side by side: agreement and time on real predictions, and speed on a
CamVid-sized image.

    PIXELWISE_DATA=../shared/data python benchmarks/crf.py --checkpoint runs/fcn8s_camvid_cpu/best.pt \
        --checkpoint runs/unet_isbi2012_cpu/best.pt --images 20 --out benchmarks/results/crf.json

For each checkpoint: the first --images validation images are predicted once (the plain probabilities), then
refined by the torch and the pydensecrf backend with the default parameters, alternating, in this process:
the share of pixels with the same label, the largest probability difference, seconds per image of each (and of
the network's own pass), and
mean IoU (confusion over those images) without CRF and with each backend. Then the speed test the issue
sets: a 360x480 image with 11 classes, both backends alternating --rounds times, median seconds; and the
memory of each on that image (peak resident memory of a fresh process during the call, over its resident
memory before it), also for one CRF-as-RNN training step (forward and backward through the layer) on the CPU
FCN-8s recipe's batch of 4 crops of 256x256. --memory-only measures the memory alone into an existing --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _machine() -> dict:
    from pixelwise.engine.trainer import environment

    env = environment(torch.device("cpu"))
    return {k: env[k] for k in ("cpu", "amx", "threads", "torch")}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def on_checkpoint(path: str, images: int) -> dict:
    from pixelwise.crf import dense_crf
    from pixelwise.engine.run import build_datasets
    from pixelwise.inference import build_inference
    from pixelwise.metrics import ConfusionMatrix

    inference = build_inference(path)
    predictor, ds = inference.predictor, build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
    k = inference.cfg.model.num_classes
    learned = predictor.refinement  # a CRF-as-RNN checkpoint's own CRF, timed and scored beside the others
    names = ("none", "torch", "pydensecrf", *(["learned"] if learned is not None else []))
    confusion = {name: ConfusionMatrix(k, ignore_index=ds.ignore_index) for name in names}
    rows = []
    for i in range(min(images, len(ds))):
        image, target = ds[i]
        image = image.as_subclass(torch.Tensor)
        mask = target["mask"].as_subclass(torch.Tensor)
        probs, t_net = _timed(lambda: predictor.predict_probs(image))
        read = predictor.denormalize(image)
        ours, t_ours = _timed(lambda: dense_crf(probs, read, backend="torch"))
        ref, t_ref = _timed(lambda: dense_crf(probs, read, backend="pydensecrf"))
        outputs = {"none": probs, "torch": ours, "pydensecrf": ref}
        if learned is not None:
            outputs["learned"], t_learned = _timed(lambda: learned.refine(probs, read))
        for name, p in outputs.items():
            confusion[name].update(p.argmax(0), mask)
        rows.append({"agreement": (ours.argmax(0) == ref.argmax(0)).float().mean().item(),
                     "max_prob_diff": (ours - ref).abs().max().item(), "torch_s": t_ours, "pydensecrf_s": t_ref,
                     "network_s": t_net, **({"learned_s": t_learned} if learned is not None else {})})
        print(f"{Path(path).parent.name} image {i}: agreement {rows[-1]['agreement']:.5f}, "
              f"max diff {rows[-1]['max_prob_diff']:.2e}, torch {t_ours:.2f} s, pydensecrf {t_ref:.2f} s", flush=True)
    h, w = image.shape[-2:]
    return {"checkpoint": path, "recipe": inference.cfg.output_dir, "images": len(rows), "size": [int(h), int(w)],
            "classes": k, "min_agreement": min(r["agreement"] for r in rows),
            "mean_agreement": statistics.mean(r["agreement"] for r in rows),
            "max_prob_diff": max(r["max_prob_diff"] for r in rows),
            "torch_s_median": statistics.median(r["torch_s"] for r in rows),
            "pydensecrf_s_median": statistics.median(r["pydensecrf_s"] for r in rows),
            "network_s_median": statistics.median(r["network_s"] for r in rows),
            **({"learned_s_median": statistics.median(r["learned_s"] for r in rows)} if learned is not None else {}),
            "miou": {name: c.compute()["miou"] for name, c in confusion.items()}}


def speed(rounds: int) -> dict:
    from pixelwise.crf import dense_crf

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    probs = torch.softmax(torch.from_numpy(rng.normal(0, 2, (11, 360, 480)).astype(np.float32)), 0)
    times = {"torch": [], "pydensecrf": []}
    for _ in range(rounds):
        for backend in times:
            times[backend].append(_timed(lambda: dense_crf(probs, image, backend=backend))[1])
    medians = {b: statistics.median(t) for b, t in times.items()}
    return {"size": [360, 480], "classes": 11, "iterations": 5, "rounds": rounds, "seconds": times,
            "median_s": medians, "torch_over_pydensecrf": medians["torch"] / medians["pydensecrf"]}


_MEMORY = """
import sys, numpy as np, torch
from pixelwise.crf import CRFParams, dense_crf
from pixelwise.models.crfasrnn import CRFLayer

def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))

rng = np.random.default_rng(0)
what = sys.argv[1]
if what == "crf-as-rnn":
    layer = CRFLayer(11, CRFParams())
    logits = torch.randn(4, 11, 256, 256, requires_grad=True)
    colours = torch.from_numpy(rng.integers(0, 256, (4, 3, 256, 256)).astype(np.float32))
    run = lambda: layer(logits, colours).logsumexp(1).sum().backward()
else:
    image = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    probs = torch.softmax(torch.from_numpy(rng.normal(0, 2, (11, 360, 480)).astype(np.float32)), 0)
    run = lambda: dense_crf(probs, image, backend=what)
before = rss("VmRSS:")
run()
print(rss("VmHWM:") - before)
"""


def memory() -> dict:
    """Extra peak resident memory (MB) of one call, each in a fresh process."""
    import subprocess
    import sys

    out = {}
    for what in ("torch", "pydensecrf", "crf-as-rnn"):
        done = subprocess.run([sys.executable, "-c", _MEMORY, what], capture_output=True, text=True, check=True)
        out[what] = int(done.stdout.strip()) / 2**20
    return {"extra_peak_mb": out, "image": [360, 480], "classes": 11,
            "crf_as_rnn_batch": "4 x 11 x 256 x 256, forward and backward"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=[])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--memory-only", action="store_true")
    args = p.parse_args()
    if args.memory_only:
        result = json.loads(args.out.read_text())
        result["memory"] = memory()
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["memory"]))
        return
    result = {"machine": _machine(), "checkpoints": [on_checkpoint(c, args.images) for c in args.checkpoint],
              "speed": speed(args.rounds), "memory": memory()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["speed"]["median_s"]), f"ratio {result['speed']['torch_over_pydensecrf']:.2f}")


if __name__ == "__main__":
    main()
