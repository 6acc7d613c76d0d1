"""Mask R-CNN through the engine and the CLI: instance datasets, list batches and loss dicts, COCO AP, predict."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import load_config
from pixelwise.data import build_dataset
from pixelwise.data.transforms import instance_transforms
from pixelwise.engine import train
from pixelwise.engine.tasks.instance import collate_instances, evaluate_instances
from pixelwise.engine.trainer import TrainingError
from pixelwise.output.predictions import draw_instances, instance_map
from conftest import require_dataset

# Small images and few RoIs keep these steps at about a second on a CPU.
SMALL = ["-o", "model.args.min_size=128", "-o", "model.args.max_size=128", "-o", "model.args.box_batch_size_per_image=64",
         "-o", "model.args.rpn_post_nms_top_n=[200, 100]", "-o", "model.args.detections_per_img=100",
         "-o", "train.device=cpu", "-o", "data.limit=2", "-o", "data.train_split=0-7", "-o", "data.val_split=25-28"]
TINY_COCO = ["-o", "data.path=tiny-coco", "-o", "data.train_split=annotations_instances.json:images",
             "-o", "data.val_split=annotations_instances.json:images", "-o", "model.args.backbone_weights=null",
             "-o", "data.num_workers=0"]


def _cfg(name: str, tmp_path: Path, *overrides: str):
    args = [o for o in [*SMALL, *overrides] if o != "-o"]
    return load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml",
                       [f"data.root={require_dataset('isbi2012').parent}", f"output_dir={tmp_path}", *args])


@pytest.mark.slow  # 12 s; the instance CLI also runs in the export, serve and tiny-COCO tests
def test_isbi_recipe_train_eval_predict_through_the_cli(tmp_path, capsys):
    root = require_dataset("isbi2012").parent
    run = tmp_path / "run"
    common = ["--data-root", str(root), *SMALL, "-o", "train.max_steps=2", "-o", "train.val_every=1"]
    assert main(["train", "mask_rcnn_r18_fpn_isbi_cpu", "--output-dir", str(run), *common]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    log = (run / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    for key in ("loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                "val_segm_AP", "val_bbox_AP"):
        assert key in header, key

    # eval and predict take every weight from the checkpoint: backbone weights named in the recipe (here a
    # missing file) are not read, so a recipe naming ImageNet weights works offline.
    missing = ["-o", f"model.args.backbone_weights={tmp_path / 'resnet18_not_here.pth'}"]
    assert main(["eval", "mask_rcnn_r18_fpn_isbi_cpu", "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "metrics.json"), *common, *missing]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl",
                "segm_AP", "segm_AP50", "segm_AP75", "segm_APs", "segm_APm", "segm_APl"):
        assert -1 <= metrics[key] <= 1, key
    assert metrics["num_images"] == 2 and metrics["dataset"] == "isbi_instances"

    image = root / "isbi2012" / "train" / "image" / "25.png"
    out = tmp_path / "pred"
    assert main(["predict", "mask_rcnn_r18_fpn_isbi_cpu", "--checkpoint", str(run / "last.pt"), str(image),
                 "--out", str(out), *common, *missing, "-o", "infer.score_threshold=0"]) == 0
    record = json.loads((out / "25.json").read_text())
    side = Image.open(image).size[0]  # 512, or 352 in the bundled sample
    assert (record["height"], record["width"]) == (side, side) and len(record["instances"]) > 0
    first = record["instances"][0]
    assert first["class_name"] == "cell" and first["segmentation"]["size"] == [side, side]
    ids = np.array(Image.open(out / "25_instances.png"))
    assert ids.shape == (side, side) and ids.max() <= len(record["instances"])
    assert Image.open(out / "25_overlay.png").size == (side, side)

    capsys.readouterr()  # train does read them: a missing file is one line on stderr and exit code 2
    assert main(["train", "mask_rcnn_r18_fpn_isbi_cpu", "--output-dir", str(tmp_path / "run2"), *common, *missing]) == 2
    err = capsys.readouterr().err
    assert "pixelwise train: error:" in err and "resnet18_not_here.pth" in err and "Traceback" not in err


@pytest.mark.parametrize("recipe", ["mask_rcnn_r50_fpn_coco",  # C4 (16 s) under -m slow, for the 10-minute suite
                                    pytest.param("mask_rcnn_r50_c4_coco", marks=pytest.mark.slow)])
def test_coco_recipes_train_a_step_on_tiny_coco(recipe, tmp_path, capsys):
    root = require_dataset("tiny-coco").parent
    assert main(["train", recipe, "--data-root", str(root), "--output-dir", str(tmp_path), *SMALL, *TINY_COCO,
                 "-o", "train.max_steps=1", "-o", "train.grad_accum=1", "-o", "train.batch_size=1",
                 "-o", "train.val_every=1"]) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=False)
    assert len(ckpt["class_names"]) == 81 and ckpt["class_names"][1] == "person"


def test_coco_recipes_hold_the_papers_schedule():
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mask_rcnn_r50_fpn_coco.yaml")
    t = cfg.train
    assert cfg.model.args["min_size"] == 800 and t.lr == 0.02 and t.momentum == 0.9 and t.weight_decay == 1e-4
    assert t.batch_size * t.grad_accum == 16 and t.max_steps == 160_000 and t.step_size == 120_000 and t.gamma == 0.1


def test_a_semantic_model_on_instances_and_a_wrong_class_count_are_refused(tmp_path):
    require_dataset("isbi2012")
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "model.name=unet", "model.args={}")
    with pytest.raises(TrainingError, match="semantic model"):
        train(cfg, progress=False)
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "model.num_classes=3")
    with pytest.raises(TrainingError, match="model.num_classes=1"):
        train(cfg, progress=False)
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "train.class_weights=[1.0]")
    with pytest.raises(TrainingError, match="class_weights"):
        train(cfg, progress=False)
    cfg = _cfg("unet_isbi2012_cpu", tmp_path, "model.name=mask_rcnn_r18_fpn", "model.args={}",
               "data.augment.crop_size=null")
    with pytest.raises(TrainingError, match="isbi_instances"):
        train(cfg, progress=False)


class _NaNAtStep(nn.Module):
    """Wraps a Mask R-CNN; its mask loss becomes NaN from the `at`-th training call on."""

    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0
        self.roi_heads, self.num_classes = model.roi_heads, model.num_classes

    def forward(self, images, targets=None, **kw):
        out = self.model(images, targets, **kw)
        if targets is not None:
            self.calls += 1
            if self.calls >= self.at:
                out["losses"]["loss_mask"] = out["losses"]["loss_mask"] * float("nan")
        return out


def test_a_non_finite_loss_stops_naming_the_term_and_the_last_checkpoint(tmp_path):
    import pixelwise

    require_dataset("isbi2012")
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "train.ckpt_every=1", "train.max_steps=5", "train.val_every=100")
    model = _NaNAtStep(pixelwise.create_model("mask_rcnn_r18_fpn", num_classes=1, norm="gn", min_size=128,
                                              max_size=128, box_batch_size_per_image=64), at=2)
    with pytest.raises(TrainingError, match=r"loss is nan \(.*loss_mask=nan.*\) at step 1.*its state at step 1 is "
                                            r"saved in .*last\.pt \(resume with"):
        train(cfg, model=model, progress=False)
    assert torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)["step"] == 1


class _Oracle(nn.Module):
    """Detects exactly the ground truth of the dataset it is given (score 1), to check the AP plumbing."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.targets = {self.key(dataset[i][0]): dataset[i][1] for i in range(len(dataset))}
        self.roi_heads = nn.Module()
        self.roi_heads.detections_per_img = 300

    @staticmethod
    def key(image: torch.Tensor) -> tuple:
        return tuple(image.shape), round(float(image.sum()), 2)

    def forward(self, images, targets=None, detect=None):
        out = []
        for img in images:
            t = self.targets[self.key(img)]
            n = len(t["labels"])
            out.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"], "scores": torch.ones(n),
                        "masks": t["masks"].as_subclass(torch.Tensor).bool()})
        return {"detections": out}


def test_evaluate_instances_scores_the_ground_truth_as_perfect_and_missing_masks_as_zero(tmp_path):
    require_dataset("isbi2012")
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path)
    ds = build_dataset(cfg.data, "val")
    ds.transforms = instance_transforms(cfg.data, train=False)
    oracle = _Oracle(ds)
    metrics = evaluate_instances(oracle, ds, torch.device("cpu"), batch_size=2, progress=False)
    assert metrics["segm_AP"] == pytest.approx(1.0) and metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["num_detections"] == sum(len(ds[i][1]["labels"]) for i in range(len(ds)))
    for t in oracle.targets.values():  # the right boxes with empty masks: box AP stays 1, mask AP drops to 0
        t["masks"] = torch.zeros_like(t["masks"])
    metrics = evaluate_instances(oracle, ds, torch.device("cpu"), progress=False)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["segm_AP"] == 0.0


def test_instance_datasets_in_build_dataset(tmp_path):
    require_dataset("tiny-coco", full=True)  # its image ids and counts
    cfg = _cfg("mask_rcnn_r50_fpn_coco", tmp_path, *[o for o in TINY_COCO if o != "-o"], "data.limit=3")
    ds = build_dataset(cfg.data, "train")
    assert len(ds) == 3 and ds.image_ids == [391895, 522418, 184613] and ds.num_classes == 80
    images, targets = collate_instances([ds[0], ds[1]])
    assert isinstance(images, list) and images[0].shape == (3, 360, 640) and type(images[0]) is torch.Tensor
    assert [len(t["labels"]) for t in targets] == [4, 4] and targets[0]["image_id"] == 391895
    cfg.data.train_split = "train2017"  # COCO 2017's layout, absent from tiny-coco: the missing file is named
    with pytest.raises(Exception, match="instances_train2017.json"):
        build_dataset(cfg.data, "train")
    cfg.data.augment.crop_size = 256
    with pytest.raises(ValueError, match="crop_size=256 is not supported"):
        instance_transforms(cfg.data, train=True)

    isbi = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "data.limit=null")
    ds = build_dataset(isbi.data, "val")
    assert ds.indices == [25, 26, 27, 28] and ds[0][0].shape in ((3, 512, 512), (3, 352, 352))  # full or sample


def test_training_flips_move_boxes_and_masks_with_the_image(tmp_path):
    require_dataset("isbi2012")
    cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path, "data.augment.vflip=false")
    ds = build_dataset(cfg.data, "train")
    image, target = ds[0]
    ds.transforms = instance_transforms(cfg.data, train=True)
    flipped = None
    for seed in range(10):
        torch.manual_seed(seed)
        img2, t2 = ds[0]
        if not torch.equal(img2, image):
            flipped = img2, t2
            break
    assert flipped is not None
    img2, t2 = flipped
    assert torch.equal(img2, image.flip(-1)) and torch.equal(t2["masks"], target["masks"].flip(-1))
    boxes = target["boxes"].as_subclass(torch.Tensor)
    side = image.shape[-1]
    expected = torch.stack([side - boxes[:, 2], boxes[:, 1], side - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.equal(t2["boxes"].as_subclass(torch.Tensor), expected)


def test_instance_map_paints_higher_scores_over_lower_ones():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    masks[2, 3] = True
    ids = instance_map(masks, torch.tensor([0.9, 0.8, 0.1]), score_threshold=0.5)
    assert ids.dtype == np.uint16
    assert ids[:, 0].tolist() == [1, 1, 2, 0]  # row 1: both 0 and 1, detection 0 scores higher; row 3: below 0.5


@pytest.mark.slow  # about 5 minutes on 2 cores: training to a target
def test_mask_rcnn_overfits_two_tiny_coco_images(tmp_path):
    """From scratch, 100 steps on the first two tiny-coco images (8 objects, 6 classes) give a high mask AP on
    them. Small images and 32 RoIs per image keep a step near a second; trainable BN and Adam learn fast."""
    require_dataset("tiny-coco")
    cfg = load_config(None, [
        f"data.root={require_dataset('tiny-coco').parent}", "data.dataset=coco", "data.path=tiny-coco", "data.limit=2",
        "data.train_split=annotations_instances.json:images", "data.val_split=annotations_instances.json:images",
        "data.augment.hflip=false", "model.name=mask_rcnn_r18_fpn", "model.num_classes=80",
        "model.args={norm: bn, frozen_bn: false, min_size: 192, max_size: 384, box_batch_size_per_image: 32,"
        " rpn_pre_nms_top_n: [600, 300], rpn_post_nms_top_n: [300, 300]}",
        "train.optimizer=adam", "train.lr=2e-3", "train.schedule=poly", "train.warmup_steps=10", "train.grad_clip=10",
        "train.max_steps=100", "train.batch_size=2", "train.val_every=100", "train.ckpt_every=100",
        "train.best_metric=segm_AP", "train.device=cpu", f"output_dir={tmp_path}"])
    state = train(cfg, progress=False)
    metrics = json.loads((tmp_path / "val_metrics.json").read_text())
    assert state.step == 100 and metrics["num_images"] == 2
    assert metrics["segm_AP50"] >= 0.9, metrics
    assert metrics["segm_AP"] >= 0.5, metrics


def test_mask_rcnn_resume_continues_exactly(tmp_path):
    """An interrupted Mask R-CNN run resumed from last.pt gives the unbroken run's losses and weights, bit
    for bit: the RoI and anchor sampling draws from the RNG states the checkpoint restores."""
    import csv

    from test_trainer import StopAt

    require_dataset("isbi2012")

    def run(name: str, *hooks, resume=None, extra=()):
        cfg = _cfg("mask_rcnn_r18_fpn_isbi_cpu", tmp_path / name, "train.max_steps=4", "train.val_every=100",
                   "train.log_every=1", "train.warmup_steps=2", *extra)
        return train(cfg, hooks=hooks, resume=resume, progress=False)

    assert run("full").step == 4
    assert run("part", StopAt(2)).stopped == "signal"
    # Resuming takes every weight from last.pt, so pretrained weights named in the recipe are not read.
    missing = f"model.args.backbone_weights={tmp_path / 'not_here.pth'}"
    assert run("part", resume=str(tmp_path / "part" / "last.pt"), extra=[missing]).step == 4

    def log(name):
        with (tmp_path / name / "log.csv").open() as f:
            return [(r["loss"], r["loss_mask"], r["loss_objectness"]) for r in csv.DictReader(f) if r.get("loss")]

    assert len(log("full")) == 4 and log("full") == log("part")
    a = torch.load(tmp_path / "full" / "last.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)



def test_instance_overlays_name_the_class_and_score_of_each_instance():
    image = torch.full((3, 40, 60), 0.5)
    ids = np.zeros((40, 60), np.uint16)
    ids[10:30, 10:50] = 1
    boxes = torch.tensor([[10.0, 10.0, 50.0, 30.0]])
    plain = np.asarray(draw_instances(image, ids, boxes, [""]))
    named = np.asarray(draw_instances(image, ids, boxes, ["cell 0.93"]))
    changed = np.argwhere((plain != named).any(-1))
    assert len(changed) > 20  # the caption's pixels
    assert changed[:, 0].min() >= 10 and changed[:, 1].min() >= 10 and changed[:, 1].max() < 60  # at the box's corner
