"""What CRF-as-RNN's fine-tuning changed, run by run: its network alone, its network with the fixed CRF it started
from (infer.crf), and with its learned CRF (the run's own score), on the whole validation split; and how far the
learned kernel weights and compatibility moved from their initialisation.

    PIXELWISE_DATA=../shared/data python benchmarks/crfasrnn_parts.py --runs /tmp/reproduce/crf \
        --out benchmarks/results/crfasrnn_parts.json

--runs is the folder of `pixelwise reproduce crf` (its crf-as-rnn/seedK runs are read).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parts(run: Path) -> dict:
    from pixelwise.config import apply_override
    from pixelwise.crf import crf_settings
    from pixelwise.engine.run import build_datasets, build_run
    from pixelwise.inference import build_inference

    inference = build_inference(run / "last.pt")
    cfg, model = inference.cfg, inference.model
    ds = build_datasets(cfg, model, splits=("val",))["val"]
    scores = {"learned CRF": inference.task.evaluate(model, ds, inference.device, progress=False)}
    fixed = dict(cfg.model.crf)
    apply_override(cfg, "model.crf=null")
    plain = build_run(cfg, pretrained=False, splits=())
    plain.model.load_state_dict(model.net.state_dict())
    scores["network alone"] = plain.task.evaluate(plain.model.eval(), ds, inference.device, progress=False)
    cfg.infer.crf = fixed
    scores["network + fixed CRF"] = plain.task.evaluate(plain.model, ds, inference.device, progress=False)
    params = crf_settings(fixed, key="model.crf")[1]
    k = cfg.model.num_classes
    start = {"kernel_weights": torch.tensor([[params.w1] * k, [params.w2] * k]), "compat": 1 - torch.eye(k)}
    layer = dict(model.crf.named_parameters())
    drift = {name: (layer[name].detach() - value).abs().max().item() for name, value in start.items()}
    return {"run": str(run), "miou": {n: m["miou"] for n, m in scores.items()},
            "trimap_acc_2": {n: m["trimap_acc_2"] for n, m in scores.items()}, "largest_change": drift,
            "kernel_weights": layer["kernel_weights"].detach().tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    results = []
    for run in sorted((args.runs / "crf-as-rnn").glob("seed*")):
        results.append(parts(run))
        print(json.dumps({k: results[-1][k] for k in ("run", "miou", "largest_change")}), flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")  # after each run: a stop keeps the finished ones


if __name__ == "__main__":
    main()
