"""Every registered model, in a tiny configuration, through its task (as timm tests its whole zoo):
build, forward, the loss dict, backward, and the evaluation output contract. A new model cannot land
untested: it is in list_models(), so it is here."""
import pytest
import torch

from helpers.synthetic import Boxes, Disks, instance_config, semantic_config
from pixelwise import create_model, list_models
from pixelwise.engine.tasks import build_task
from pixelwise.registry import model_arguments, model_task

# Small values for the width arguments a builder has; every other argument keeps its default.
TINY = {"base_width": 4, "depth": 2, "width": 0.0625, "fc_channels": 32, "growth_rate": 4, "first_channels": 8,
        "aux_loss": True, "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n": (100, 50),
        "rpn_post_nms_top_n": (50, 20), "box_batch_size_per_image": 32, "detections_per_img": 10}


def tiny(name: str) -> dict:
    args = model_arguments(name)
    kwargs = {k: v for k, v in TINY.items() if k in args}
    if "in_channels" in args:
        kwargs["in_channels"] = 3
    return kwargs


@pytest.mark.parametrize("name", list_models())
def test_model_trains_and_evaluates_through_its_task(name, tmp_path):
    torch.manual_seed(0)
    instance = model_task(name) == "instance"
    k = 1 if instance else 2
    make = instance_config if instance else semantic_config
    cfg = make(tmp_path, f"model.name={name}", f"model.num_classes={k}", "data.mean=[0.5, 0.5, 0.5]",
               "data.std=[0.25, 0.25, 0.25]") if not instance else make(tmp_path, f"model.name={name}")
    model = create_model(name, num_classes=k, **tiny(name))
    task = build_task(cfg, model)
    data = Boxes(2) if instance else Disks(2, channels=3)
    task.check(model, data)
    task.prepare(data, torch.device("cpu"), False)
    model.train()
    losses = task.loss(model, task.collate([data[0], data[1]]))
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    model.eval()
    predictor = task.predictor(model, torch.device("cpu"), class_names=data.class_names)
    image = data[0][0].as_subclass(torch.Tensor)
    if instance:
        d = predictor(image)
        n = len(d["scores"])
        assert d["boxes"].shape == (n, 4) and d["labels"].shape == (n,) and d["masks"].shape == (n, 64, 64)
        assert ((d["labels"] >= 1) & (d["labels"] <= k)).all() and len(d["class_names"]) == n
    else:
        probs = predictor.predict_probs(image)
        assert probs.shape == (k, 32, 32) and torch.allclose(probs.sum(0), torch.ones(32, 32), atol=1e-5)
    metrics = task.evaluate(model, data, torch.device("cpu"), progress=False)
    assert set(task.metric_names(cfg.data.dataset)) <= set(metrics) and metrics["num_images"] == 2
