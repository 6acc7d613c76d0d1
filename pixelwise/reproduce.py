"""`pixelwise reproduce`: the four papers' ablations re-run on the bundled data, one command each.

An experiment is a named set of runs (a bundled recipe plus overrides), each trained for the same time
budget on the fast path (bf16 + channels_last), scored by its final validation, and summarised beside
the paper's figures with a column saying whether the paper's direction held here. Every run has its
own folder OUT/EXPERIMENT/RUN/seedK: a finished one (result.json) is skipped, an interrupted one
resumes from its last.pt, so a crash or Ctrl-C loses at most train.ckpt_every steps.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pixelwise.errors import ConfigError, OutputError
from pixelwise.files import write_json, write_text
from pixelwise.progress import format_seconds

FAST = ("train.precision=bf16", "train.channels_last=true")
SEEDS = 3  # default seeds per run: the claims' intervals need at least 2


@dataclass(frozen=True)
class Planned:
    """One run an experiment plans: a recipe with overrides, its share of the budget, the paper's figure."""
    name: str
    recipe: str
    overrides: tuple[str, ...] = ()
    share: float = 1.0  # of the experiment's per-run budget
    init_from: str | None = None  # a run of the same experiment (same seed) whose last.pt this one starts from
    paper: str = ""  # the paper's figure for this setting
    # Not trained: a run of the same experiment (same seed) whose last.pt is evaluated with this run's overrides
    # (infer.*), such as a CRF after the network; its share of the budget is 0.
    evaluate: str | None = None
    # Equal epochs instead of equal time: trained (without a time limit) on as many images as this run of the same
    # experiment (same seed) saw in its budget; its share of the budget is 0.
    images_of: str | None = None


@dataclass(frozen=True)
class Claim:
    """The paper's direction: run `better` scores better than run `worse` on `metric` (default: the experiment's)."""
    better: str
    worse: str
    paper: str
    metric: str | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    source: str  # where the paper says it
    metric: str
    budget: float  # default seconds per run (share 1)
    runs: tuple[Planned, ...]
    claims: tuple[Claim, ...]
    overrides: tuple[str, ...] = ()  # every run's
    notes: str = ""
    extra_metrics: tuple[str, ...] = field(default=())
    budget_why: str = ""  # how the default budget was chosen (benchmarks/budgets.py)
    paper: bool = True  # a claim of the four papers (run by default); False: a question of ours, run by name

    def total(self, budget: float | None = None) -> float:
        return sum(r.share for r in self.runs) * (budget or self.budget)


def _fcn(model: str) -> tuple[str, ...]:
    return (f"model.name={model}",)


# Mask R-CNN Table 2b needs classes whose masks compete: ISBI cells split into "small" and "large".
TWO_CLASSES = ("data.dataset=isbi_instances_by_size", "model.num_classes=2")
MRCNN_CHEAPER = ("model.args.min_size=384", "model.args.max_size=384", "model.args.box_batch_size_per_image=64")


def _mrcnn(name: str, *overrides: str, paper: str) -> Planned:
    return Planned(name, "mask_rcnn_r18_fpn_isbi_cpu", overrides, paper=paper)


# benchmarks/budgets.py (BENCHMARKS.md, "Reproduce budgets"), seed 0 each: the baseline at B and at 4 B.
_FCN_BUDGET = ("120 s per run: there the recipe's FCN-8s reaches 74% of the mean IoU it reaches in 480 s (0.419 vs "
               "0.563).")
_UNET_BUDGET = ("120 s per run: there the U-Net's vrand_sweep (0.934) is already what it is after 480 s (0.914).")
_ISBI_SCORE = ("Scored as the ISBI 2012 challenge scores: vrand_sweep, V_Rand (thinned) at the best of its thresholds "
               "0.0..1.0 of the membrane probability (higher is better); adapted_rand_error is 1 - V_Rand of the argmax.")

# The CRF found by `pixelwise crf-search` for the CPU FCN-8s recipe on CamVid (BENCHMARKS.md), as post-processing
# and as CRF-as-RNN's initialisation.
_CRF = "{iterations: 5, w1: 3.75, theta_alpha: 75, theta_beta: 16.25, w2: 3, theta_gamma: 3}"


# Augmentation that generalises (issue 29): random scale before the recipe's crop, and colour jitter.
_AUGMENT = ("data.augment.scale=[0.5, 2.0]", "data.augment.brightness=0.2", "data.augment.contrast=0.2",
            "data.augment.saturation=0.2", "data.augment.hue=0.02")


def _crf_runs() -> tuple[Planned, ...]:
    fcn = "fcn8s_camvid_cpu"
    return (Planned("FCN-8s", fcn, paper="61.3"),
            Planned("FCN-8s + CRF", fcn, (f"infer.crf={_CRF}",), share=0, evaluate="FCN-8s", paper="63.7"),
            # Equal time: the network trained on for half the budget, alone or with the CRF layer in the loss.
            Planned("FCN-8s, trained on", fcn, share=0.5, init_from="FCN-8s", paper="61.3"),
            Planned("FCN-8s, trained on + CRF", fcn, (f"infer.crf={_CRF}",), share=0, evaluate="FCN-8s, trained on",
                    paper="63.7"),
            Planned("CRF-as-RNN", fcn, (f"model.crf={_CRF}",), share=0.5, init_from="FCN-8s", paper="69.6"))


EXPERIMENTS = {e.name: e for e in (
    Experiment(
        "fcn-skips", "FCN-32s / 16s / 8s at equal time on CamVid, at once and staged",
        "FCN (Long et al. 2015) section 4.2 and Table 2: VOC2011 val mean IU 59.4 / 62.4 / 62.7", "miou", 120,
        runs=(Planned("FCN-32s", "fcn8s_camvid_cpu", _fcn("fcn32s"), paper="59.4"),
              Planned("FCN-16s", "fcn8s_camvid_cpu", _fcn("fcn16s"), paper="62.4"),
              Planned("FCN-8s", "fcn8s_camvid_cpu", _fcn("fcn8s"), paper="62.7"),
              # Staged (section 4.2): each net starts from the coarser one, the learning rate divided by 100.
              Planned("FCN-32s staged", "fcn8s_camvid_cpu", _fcn("fcn32s"), share=1 / 3, paper="59.4"),
              Planned("FCN-16s staged", "fcn8s_camvid_cpu", (*_fcn("fcn16s"), "train.lr=1e-5"), share=1 / 3,
                  init_from="FCN-32s staged", paper="62.4"),
              Planned("FCN-8s staged", "fcn8s_camvid_cpu", (*_fcn("fcn8s"), "train.lr=1e-7"), share=1 / 3,
                  init_from="FCN-16s staged", paper="62.7")),
        claims=(Claim("FCN-16s", "FCN-32s", "62.4 vs 59.4"), Claim("FCN-8s", "FCN-16s", "62.7 vs 62.4"),
                Claim("FCN-16s staged", "FCN-32s staged", "62.4 vs 59.4"),
                Claim("FCN-8s staged", "FCN-16s staged", "62.7 vs 62.4")),
        notes="The recipe (a quarter of VGG16's widths, from scratch, Adam) is configs/fcn8s_camvid_cpu.yaml. At once: "
              "each net for the whole budget from the same initialisation. Staged: a third of the budget per stage, so "
              "FCN-8s staged has spent the same time as each at-once run.", budget_why=_FCN_BUDGET),
    Experiment(
        "fcn-loss-sampling", "Whole-image training vs loss sampling, against wall-clock time",
        "FCN section 4.3 and Fig. 5: sampling the loss (p = 0.5, 0.25) does not converge faster in time than whole "
        "images; whole-image training is as effective and more efficient", "miou", 120,
        runs=(Planned("whole image", "fcn8s_camvid_cpu", paper="baseline"),
              Planned("p = 0.5", "fcn8s_camvid_cpu", ("train.loss_sampling_p=0.5",), paper="no faster in time"),
              Planned("p = 0.25", "fcn8s_camvid_cpu", ("train.loss_sampling_p=0.25",), paper="no faster in time")),
        claims=(Claim("whole image", "p = 0.5", "equal or better at equal time"),
                Claim("whole image", "p = 0.25", "equal or better at equal time")),
        overrides=("train.val_every=100",),
        notes="Validated every 100 steps, so the report's curves show loss and mean IoU against training seconds.",
        budget_why=_FCN_BUDGET),
    Experiment(
        "maskrcnn-table2", "Mask R-CNN Table 2 on ISBI 2012 cells: RoI feature, mask head, mask loss, class-specific",
        "Mask R-CNN (He et al. 2017) Table 2: RoIAlign +3.4 mask AP over RoIPool (C4; RoIWarp between); FCN head "
        "+2.1 over MLP; sigmoid 30.3 vs softmax 24.8; class-specific 30.3 vs class-agnostic 29.7", "segm_AP", 120,
        runs=(_mrcnn("RoIAlign", "model.args.mask_roi=roi_align", paper="30.3 (C4)"),
              _mrcnn("RoIPool", "model.args.mask_roi=roi_pool", paper="26.9 (C4)"),
              _mrcnn("RoIWarp", "model.args.mask_roi=roi_warp", paper="27.2 (C4)"),
              _mrcnn("MLP mask head", "model.args.mask_head=mlp", paper="31.5 (FCN head 33.6, FPN)"),
              _mrcnn("2 classes, sigmoid", *TWO_CLASSES, paper="30.3"),
              _mrcnn("2 classes, softmax", *TWO_CLASSES, "model.args.mask_loss=softmax", paper="24.8"),
              _mrcnn("2 classes, class-agnostic", *TWO_CLASSES, "model.args.class_agnostic=true", paper="29.7")),
        claims=(Claim("RoIAlign", "RoIPool", "+3.4 AP (C4)"), Claim("RoIAlign", "RoIWarp", "+3.1 AP (C4)"),
                Claim("RoIAlign", "MLP mask head", "+2.1 AP (FPN: 33.6 vs 31.5)"),
                Claim("2 classes, sigmoid", "2 classes, softmax", "30.3 vs 24.8"),
                Claim("2 classes, sigmoid", "2 classes, class-agnostic", "30.3 vs 29.7")),
        overrides=MRCNN_CHEAPER,
        notes="ResNet-18-FPN from scratch (configs/mask_rcnn_r18_fpn_isbi_cpu.yaml), slices 0-24 / 25-29, made cheaper "
              "per step to take more steps in the budget: the 512x512 slices resized to 384x384 and 64 sampled RoIs "
              "per image instead of 128, the same for every setting. The paper's "
              "RoIAlign comparison is on C4 (ResNet-50, stride 16); here the FPN recipe. The two-class variant splits the "
              "cells into small and large at the median training cell area (data.dataset=isbi_instances_by_size), so "
              "that masks of different classes compete in softmax.", extra_metrics=("segm_AP50", "bbox_AP"),
        budget_why="120 s per run: there RoIAlign (at 384x384, 64 RoIs) reaches 57% of the mask AP it reaches in 480 s "
                   "(0.211 vs 0.372; the 512x512 recipe with 128 RoIs took 3.5 s a step, this one 1.1 s). Four times "
                   "longer would make this experiment 2.8 hours at 3 seeds."),
    Experiment(
        "unet-weightmap", "U-Net weight map on and off, and overlap-tile (valid) vs padded convolutions",
        "U-Net (Ronneberger et al. 2015) section 3: the weight map (w0 = 10, sigma = 5) makes the network learn the "
        "borders between touching cells; valid convolutions with overlap-tile inference give seamless maps",
        "vrand_sweep", 120,
        runs=(Planned("valid, no weight map", "unet_isbi2012_cpu", ("data.weight_map=false",), paper="recipe"),
              Planned("valid, weight map", "unet_isbi2012_cpu", ("data.weight_map=true",), paper="better borders"),
              Planned("padded, no weight map", "unet_isbi2012_cpu", ("data.weight_map=false", "model.args.padding=true"),
                  paper="(not in the paper)")),
        claims=(Claim("valid, weight map", "valid, no weight map", "weight map separates touching cells"),
                Claim("valid, weight map", "valid, no weight map", "(the argmax's score)", metric="adapted_rand_error"),
                Claim("valid, no weight map", "padded, no weight map", "overlap-tile: no border artefacts")),
        notes=f"configs/unet_isbi2012_cpu.yaml (base width 16, BatchNorm, elastic deformations); {_ISBI_SCORE}",
        extra_metrics=("adapted_rand_error", "pixel_error", "membrane_iou"), budget_why=_UNET_BUDGET),
    Experiment(
        "tiramisu-vs-fcn", "FC-DenseNet56 / 103 vs FCN-8s on CamVid at equal time and at equal epochs, with parameter "
        "counts",
        "FC-DenseNet (Jegou et al. 2017) Table 2: CamVid test mean IoU 58.9 / 66.9 (1.5 M / 9.4 M parameters) vs FCN-8s "
        "57.0 (134 M); the FC-DenseNets are trained to convergence", "miou", 220,
        runs=(Planned("FC-DenseNet56", "fc_densenet56_camvid_cpu", ("model.name=fc_densenet56",), paper="58.9"),
              Planned("FC-DenseNet103", "fc_densenet56_camvid_cpu", ("model.name=fc_densenet103",), paper="66.9"),
              Planned("FCN-8s", "fcn8s_camvid_cpu", paper="57.0"),
              Planned("FCN-8s, FC-DenseNet56's images", "fcn8s_camvid_cpu", share=0, images_of="FC-DenseNet56",
                      paper="57.0"),
              Planned("FCN-8s, FC-DenseNet103's images", "fcn8s_camvid_cpu", share=0, images_of="FC-DenseNet103",
                      paper="57.0")),
        claims=(Claim("FC-DenseNet103", "FCN-8s", "66.9 vs 57.0"), Claim("FC-DenseNet56", "FCN-8s", "58.9 vs 57.0"),
                Claim("FC-DenseNet103", "FC-DenseNet56", "66.9 vs 58.9"),
                Claim("FC-DenseNet56", "FCN-8s, FC-DenseNet56's images", "58.9 vs 57.0 (equal epochs)"),
                Claim("FC-DenseNet103", "FCN-8s, FC-DenseNet103's images", "66.9 vs 57.0 (equal epochs)")),
        notes="From scratch: the paper trains for hundreds of epochs on a GPU. At equal time a few minutes on two cores "
              "favour the nets that take the most steps, so each FC-DenseNet is also compared with an FCN-8s trained on "
              "as many images as it saw (same seed, no time limit): equal epochs. FC-DenseNet67 is left out (in no "
              "claim). Our FCN-8s is the CPU recipe's quarter-width net.",
        budget_why="220 s per run: there FC-DenseNet56 reaches 84% of the mean IoU it reaches in 880 s (0.183 vs "
                   "0.219; 122 and 495 steps): from scratch it learns slowly at any of these budgets."),
    Experiment(
        "unet-elastic", "U-Net with and without elastic deformations, on 25 and on 5 training slices",
        "U-Net (Ronneberger et al. 2015) sections 1 and 3.1: with very few training images, elastic deformations "
        "are the key to teaching the network invariance (and the data augmentation lets it learn from few images)",
        "vrand_sweep", 120,
        runs=(Planned("25 slices, elastic", "unet_isbi2012_cpu", ("data.augment.elastic=true",), paper="key with few"),
              Planned("25 slices, no elastic", "unet_isbi2012_cpu", ("data.augment.elastic=false",), paper=""),
              Planned("5 slices, elastic", "unet_isbi2012_cpu", ("data.augment.elastic=true", "data.train_split=0-4"),
                      paper="key with few"),
              Planned("5 slices, no elastic", "unet_isbi2012_cpu", ("data.augment.elastic=false", "data.train_split=0-4"),
                      paper="")),
        claims=(Claim("25 slices, elastic", "25 slices, no elastic", "elastic deformations help"),
                Claim("5 slices, elastic", "5 slices, no elastic", "the key with very few images")),
        notes="configs/unet_isbi2012_cpu.yaml (flips and 90-degree rotations stay on in every run); ISBI slices 0-24 "
              f"or 0-4 for training, 25-29 for validation. {_ISBI_SCORE}",
        extra_metrics=("adapted_rand_error", "pixel_error"), budget_why=_UNET_BUDGET),
    Experiment(
        "fcn-shift-and-stitch", "FCN-32s made dense by shift-and-stitch (filter rarefaction) vs FCN-8s's skips: quality "
        "and inference cost",
        "FCN section 4.2, \"Refinement by other means\": shift-and-stitch gave a worse cost to improvement ratio than "
        "layer fusion (skips); section 3.2: filter rarefaction computes shift-and-stitch's output in one pass", "miou",
        120,
        runs=(Planned("FCN-32s", "fcn8s_camvid_cpu", _fcn("fcn32s"), paper="59.4 (VOC2011)"),
              Planned("FCN-8s", "fcn8s_camvid_cpu", _fcn("fcn8s"), paper="62.7 (VOC2011)"),
              Planned("FCN-32s, stride 32", "fcn8s_camvid_cpu", share=0, evaluate="FCN-32s", paper="59.4"),
              Planned("FCN-32s, shift-and-stitch to stride 16", "fcn8s_camvid_cpu", ("model.args.output_stride=16",),
                      share=0, evaluate="FCN-32s", paper="worse cost / improvement"),
              Planned("FCN-32s, shift-and-stitch to stride 8", "fcn8s_camvid_cpu", ("model.args.output_stride=8",),
                      share=0, evaluate="FCN-32s", paper="worse cost / improvement"),
              Planned("FCN-8s, skips", "fcn8s_camvid_cpu", share=0, evaluate="FCN-8s", paper="62.7")),
        claims=(Claim("FCN-8s, skips", "FCN-32s, shift-and-stitch to stride 8", "skips refine more"),
                Claim("FCN-8s, skips", "FCN-32s, shift-and-stitch to stride 8", "at less cost",
                      metric="eval_seconds_per_image"),
                Claim("FCN-32s, shift-and-stitch to stride 8", "FCN-32s, stride 32", "some improvement"),
                Claim("FCN-32s, shift-and-stitch to stride 16", "FCN-32s, stride 32", "some improvement")),
        notes="FCN-32s and FCN-8s trained for the budget each (configs/fcn8s_camvid_cpu.yaml); then every net is "
              "scored by one evaluation of its last.pt that also times it (eval_seconds_per_image). Shift-and-stitch "
              "by 2 or 4 is computed by filter rarefaction (model.args.output_stride=16 or 8 at inference: the same "
              "weights, the layers after pool4 / pool3 rarefied, and the fixed bilinear upsampling of the denser "
              "scores), which gives shift-and-stitch's output in one pass; shift-and-stitch itself would cost 4 or "
              "16 passes of the whole net, so the cost column favours it.",
        extra_metrics=("eval_seconds_per_image", "trimap_acc_2", "pixel_acc"), budget_why=_FCN_BUDGET),
    Experiment(
        "fcn-class-balance", "FCN-8s on CamVid with median-frequency class weights and without",
        "FCN section 4.3, \"Class balancing\": although the labels are mildly unbalanced (about 3/4 background on "
        "PASCAL), class balancing was found unnecessary", "miou", 120,
        runs=(Planned("no class weights", "fcn8s_camvid_cpu", ("train.class_weights=null",), paper="the paper's (VOC)"),
              Planned("median frequency", "fcn8s_camvid_cpu", ("train.class_weights=median_frequency",),
                      paper="found unnecessary")),
        claims=(Claim("no class weights", "median frequency", "unnecessary: no loss without it"),),
        notes="configs/fcn8s_camvid_cpu.yaml, whose default is median-frequency weights (Eigen & Fergus), run with "
              "and without them. The paper's claim is that balancing is not needed, so an inconclusive verdict (no "
              "difference either way) agrees with it; CamVid's rare classes (poles, signs, cyclists) may make balancing "
              "help here. Mean class accuracy is the score "
              "balancing is expected to raise.", extra_metrics=("mean_acc", "pixel_acc"), budget_why=_FCN_BUDGET),
    Experiment(
        "camvid-losses", "Losses beyond cross-entropy for FCN-8s on CamVid at equal time",
        "Users' requests (issue 29; open-mmlab/mmsegmentation #1944): Dice (Milletari et al. 2016), focal (Lin et al. "
        "2017, eq. 5) and Lovasz-softmax (Berman et al. 2018, which reports higher mean IoU than cross-entropy on VOC) "
        "alone or added to the cross-entropy", "miou", 120,
        runs=(Planned("cross-entropy", "fcn8s_camvid_cpu", ("train.loss=ce",), paper="the baseline"),
              Planned("focal", "fcn8s_camvid_cpu", ("train.loss=focal",), paper="focal, gamma 2"),
              Planned("Dice", "fcn8s_camvid_cpu", ("train.loss=dice",), paper="soft Dice"),
              Planned("Lovasz", "fcn8s_camvid_cpu", ("train.loss=lovasz",), paper="Lovasz-softmax"),
              Planned("cross-entropy + Dice", "fcn8s_camvid_cpu", ("train.loss={ce: 1.0, dice: 1.0}",), paper="sum"),
              Planned("cross-entropy + Lovasz", "fcn8s_camvid_cpu", ("train.loss={ce: 1.0, lovasz: 1.0}",),
                      paper="sum")),
        claims=tuple(Claim(other, "cross-entropy", "beats cross-entropy") for other in
                     ("focal", "Dice", "Lovasz", "cross-entropy + Dice", "cross-entropy + Lovasz")),
        paper=False,
        notes="configs/fcn8s_camvid_cpu.yaml (with its median-frequency class weights, which weight the cross-entropy and "
              "focal terms per pixel and Dice per class; Lovasz has none) with each train.loss. The question is the "
              "users' (does another loss beat cross-entropy at the same time budget?), so `held` means the other loss "
              "scores higher.", extra_metrics=("mean_acc", "pixel_acc"), budget_why=_FCN_BUDGET),
    Experiment(
        "camvid-augment", "Random scale and colour jitter for FCN-8s and FC-DenseNet56 on CamVid at equal time",
        "Issue 29: scores on held-out street scenes fall well below validation; random scale (0.5-2.0) with crops "
        "and colour jitter, as street-scene recipes use (DeepLab, mmsegmentation's CamVid / Cityscapes configs)",
        "miou", 180,
        runs=(Planned("FCN-8s", "fcn8s_camvid_cpu", paper="the recipe"),
              Planned("FCN-8s + scale, colour", "fcn8s_camvid_cpu", _AUGMENT, paper="scale 0.5-2, jitter"),
              Planned("FC-DenseNet56", "fc_densenet56_camvid_cpu", paper="the recipe"),
              Planned("FC-DenseNet56 + scale, colour", "fc_densenet56_camvid_cpu", _AUGMENT, paper="scale 0.5-2, jitter")),
        claims=(Claim("FCN-8s + scale, colour", "FCN-8s", "raises validation mean IoU"),
                Claim("FC-DenseNet56 + scale, colour", "FC-DenseNet56", "raises validation mean IoU")),
        paper=False,
        notes=f"Each CPU recipe as it is and with {', '.join(_AUGMENT)}. A recipe adopts the augmentation only where "
              "the claim holds.", extra_metrics=("pixel_acc",),
        budget_why="180 s per run: between the FCN budget (120 s: 74% of its 480 s score) and FC-DenseNet56's (220 s)."),
    Experiment(
        "camvid-recipe", "The FCN-8s CPU recipe at its own 600 s budget, with cross-entropy and with Lovasz-softmax",
        "Issue 29's goal: val mIoU at least 0.60 for the FCN-8s CPU recipe at its budget (0.51 before); the loss "
        "that held in camvid-losses at 120 s, at the recipe's 600 s", "miou", 600,
        runs=(Planned("FCN-8s, cross-entropy", "fcn8s_camvid_cpu", paper="0.51 (one seed)"),
              Planned("FCN-8s, Lovasz", "fcn8s_camvid_cpu_lovasz", paper="goal: 0.60")),
        claims=(Claim("FCN-8s, Lovasz", "FCN-8s, cross-entropy", "raises validation mean IoU"),),
        paper=False,
        notes="configs/fcn8s_camvid_cpu.yaml (FCN's cross-entropy with median-frequency class weights: the recipe the "
              "papers' ablations run on) and configs/fcn8s_camvid_cpu_lovasz.yaml (the same with train.loss=lovasz), "
              "each at the recipes' own budget.", extra_metrics=("mean_acc", "pixel_acc"),
        budget_why="600 s per run: the recipes' own train.time_limit."),
    Experiment(
        "crf", "The fully connected CRF after FCN-8s on CamVid: post-processing, and trained end to end (CRF-as-RNN) "
        "at equal time",
        "DeepLab (Chen et al., ICLR 2015) Table 1(a): the CRF adds 3.9 points of VOC 2012 val mean IOU (59.80 -> "
        "63.74); CRF-RNN (Zheng et al., ICCV 2015) Table 1, reduced VOC 2012 val mean IU: plain FCN-8s 61.3, FCN-8s "
        "and CRF disconnected 63.7, CRF-RNN trained end to end 69.6", "miou", 150,
        runs=_crf_runs(),
        claims=(Claim("FCN-8s + CRF", "FCN-8s", "63.7 vs 61.3"),
                Claim("FCN-8s, trained on + CRF", "FCN-8s, trained on", "63.7 vs 61.3"),
                Claim("CRF-as-RNN", "FCN-8s, trained on + CRF", "69.6 vs 63.7")),
        notes="configs/fcn8s_camvid_cpu.yaml for the budget, then two arms of half the budget each from its last.pt: "
              "the network trained on alone (scored without and with the CRF after it) and CRF-as-RNN (model.crf, "
              "the same CRF as its initialisation, trained with the network; scored with its learned CRF). The CRF "
              f"is {_CRF}, the parameters pixelwise crf-search chose for a 600 s FCN-8s on CamVid's validation "
              "images (BENCHMARKS.md). Runs marked + CRF are not trained: they evaluate the run before them with "
              "infer.crf. The papers' figures are PASCAL VOC 2012 with a VGG16 pretrained on ImageNet.",
        extra_metrics=("trimap_acc_2", "trimap_acc_5", "pixel_acc"),
        budget_why="150 s for the first FCN-8s (at 120 s the recipe's FCN-8s reaches 74% of the mean IoU it reaches in "
                   "480 s), then two arms of 75 s."),
)}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
        raise ConfigError(f"unknown experiment {name!r}; {f'did you mean {close[0]!r}? ' if close else ''}"
                          f"expected one of {', '.join(EXPERIMENTS)} (pixelwise reproduce --list)")
    return EXPERIMENTS[name]


def default_names() -> list[str]:
    """The experiments run when none is named: the papers' claims."""
    return [name for name, e in EXPERIMENTS.items() if e.paper]


def listing() -> str:
    lines = []
    for paper in (True, False):
        if not paper:
            lines.append("Questions of ours, run by name only (not in `all`):")
        for e in (e for e in EXPERIMENTS.values() if e.paper == paper):
            lines.append(f"{e.name:<20s} {len(e.runs)} runs, {format_seconds(e.total() * SEEDS)} of training at the "
                         f"default {SEEDS} seeds  {e.title}")
        if paper:
            total = sum(EXPERIMENTS[n].total() for n in default_names()) * SEEDS
            lines.append(f"(all: {format_seconds(total)} of training, plus evaluation; --budget sets the seconds per "
                         "run, --seeds the number of seeds)")
    return "\n".join(lines)


def _config(exp: Experiment, run: Planned, folder: Path, seed: int, budget: float, overrides: Sequence[str],
            init_from: Path | None):
    from pixelwise.config import resolve_config
    from pixelwise.config import load_config

    limit = f"{budget * run.share:g}" if run.images_of is None else "null"  # equal epochs: max_steps, set later
    extra = [*FAST, *exp.overrides, *run.overrides, *overrides, f"output_dir={folder}", f"train.seed={seed}",
             f"train.time_limit={limit}", "train.max_steps=1000000"]
    if not any(o.startswith("train.val_every=") for o in extra):
        extra.append("train.val_every=1000000")  # the final validation only
    if init_from is not None:
        extra.append(f"model.init_from={init_from}")
    return load_config(resolve_config(run.recipe), extra)


def _result(folder: Path, state, cfg) -> dict:
    from pixelwise.engine.run import build_model

    metrics = json.loads((folder / "val_metrics.json").read_text())
    params = sum(p.numel() for p in build_model(cfg, pretrained=False).parameters())
    return {"steps": state["step"], "train_seconds": state["train_seconds"], "params": params,
            "metrics": _scalars(metrics)}


def reproduce(name: str | Experiment, *, out="reproduce", budget: float | None = None, seeds: int = SEEDS,
              overrides: Sequence[str] = (), data_root: str | None = None, progress: bool = True,
              report: bool = True) -> dict:
    """Run (or resume) experiment `name` (or an Experiment) into OUT/NAME; returns the summary (also written to
    summary.json/.md)."""
    from pixelwise.engine.trainer import train

    exp = name if isinstance(name, Experiment) else get(name)
    budget = float(budget or exp.budget)
    if budget <= 0 or seeds < 1:
        raise ConfigError(f"--budget {budget:g} / --seeds {seeds}: expected seconds > 0 and at least one seed")
    root = Path(out) / exp.name
    if root.exists() and not root.is_dir():
        raise OutputError(f"--out {str(out)!r}: {str(root)!r} exists and is not a folder")
    _check_summary_files(root, exp.name, report)
    overrides = [*overrides, *([f"data.root={data_root}"] if data_root else [])]
    plan = [(run, seed) for seed in range(seeds) for run in exp.runs]
    planned = sum(budget * r.share for r, _ in plan)
    done_budget, t0, results = 0.0, time.monotonic(), {}
    for k, (run, seed) in enumerate(plan, 1):
        folder = root / slug(run.name) / f"seed{seed}"
        spent = time.monotonic() - t0
        eta = f", about {format_seconds((planned - done_budget) * spent / done_budget)} left" if done_budget else ""
        _say(progress, f"[{k}/{len(plan)}] {exp.name}: {run.name}, seed {seed} ({budget * run.share:.0f} s) — "
                       f"{format_seconds(spent)} elapsed{eta}")
        results[(run.name, seed)] = _train_one(exp, run, folder, seed, budget, overrides, root, progress, train)
        done_budget += budget * run.share
    summary = summarise(exp, budget, seeds, results)
    write_json(root / "summary.json", summary, what="experiment summary")
    write_text(root / "summary.md", summary_markdown(summary), what="experiment summary")
    if report:
        from pixelwise.report.run import write_report

        from pixelwise.report.html import curves_png
        from pixelwise.report.run import _log

        trained = [r for r in exp.runs if r.evaluate is None]  # the report shows training runs
        dirs = [root / slug(r.name) / "seed0" for r in trained]
        logs = [(f"{r.name}, seed {s}", _log(root / slug(r.name) / f"seed{s}" / "log.csv"))
                for r in trained for s in range(seeds)]
        curves = curves_png([(n, rows) for n, rows in logs if rows], x="time") if seeds > 1 else None
        summary["report"] = str(write_report(dirs, root / "report.html", data_root=data_root, title=exp.title,
                                             summary_html=summary_html(summary, curves), names=[r.name for r in trained]))
    _say(progress, f"{exp.name}: wrote {root / 'summary.md'}, {root / 'summary.json'}"
                   + (f" and {summary['report']}" if report else ""))
    return summary


def _check_summary_files(root: Path, name: str, report: bool) -> None:
    """Before any training: the summaries replace only earlier summaries of this experiment, never a user's file."""
    def ours(path: Path, is_ours) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        try:
            fine = not path.is_symlink() and is_ours(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            fine = False
        if not fine:
            raise OutputError(f"{str(path)!r} exists and is not a summary of experiment {name!r}; it is left as it "
                              "is. Move it, or choose another --out")

    ours(root / "summary.json", lambda text: json.loads(text).get("experiment") == name)
    ours(root / "summary.md", lambda text: text.startswith(f"# {name}: "))
    if report:
        from pixelwise.report.run import check_report_path

        check_report_path(root / "report.html")


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _train_one(exp, run, folder: Path, seed: int, budget: float, overrides, root: Path, progress: bool, train) -> dict:
    if run.evaluate is not None:
        return _evaluate_one(run, folder, seed, overrides, root, progress)
    init = None
    if run.init_from is not None:
        init = root / slug(run.init_from) / f"seed{seed}" / "last.pt"
    cfg = _config(exp, run, folder, seed, budget, overrides, init)
    if run.images_of is not None:  # equal epochs: the source's number of training images, no time limit
        cfg.train.max_steps = _steps_for_images_of(root / slug(run.images_of) / f"seed{seed}", cfg)
    done = folder / "result.json"
    if done.is_file() or (folder / "config.yaml").is_file():
        _check_same_settings(folder, cfg)
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("budget") == budget * run.share and (run.images_of is None
                                                           or result.get("steps") == cfg.train.max_steps):
            _say(progress, f"  finished before: {done}")
            return result
        if result.get("budget", 0) > budget * run.share:
            raise OutputError(f"{str(folder)!r} holds a run of {result['budget']:g} s, longer than the "
                              f"{budget * run.share:g} s asked for; use another --out")
    resume = folder / "last.pt" if (folder / "last.pt").is_file() else None
    if resume is not None:
        _say(progress, f"  resuming from {resume}")
    # Without a last.pt, a folder of these settings (checked above) holds nothing to continue: start it over.
    state = train(cfg, resume=str(resume) if resume else None, progress=progress, overwrite=resume is None)
    if state.stopped == "signal":
        _say(progress, f"  interrupted: {run.name} resumes from {folder / 'last.pt'} when the command is run again")
        raise KeyboardInterrupt
    result = {"run": run.name, "seed": seed, "budget": budget * run.share, "folder": str(folder),
              **_result(folder, json.loads((folder / "train_state.json").read_text()), cfg)}
    write_json(done, result, what="run result")
    if state.interrupted:  # during the final validation: this run is complete, no other starts
        _say(progress, f"  interrupted: {run.name} finished ({done}); run the command again for the others")
        raise KeyboardInterrupt
    return result


def _steps_for_images_of(source: Path, cfg) -> int:
    """Steps of `cfg` that see as many training images as the finished run in `source` saw."""
    from pixelwise.config import load_config

    step = json.loads((source / "train_state.json").read_text())["step"]
    t = load_config(source / "config.yaml").train
    return max(1, round(step * t.batch_size * t.grad_accum / (cfg.train.batch_size * cfg.train.grad_accum)))


def _evaluate_one(run: Planned, folder: Path, seed: int, overrides, root: Path, progress: bool) -> dict:
    """A run that is not trained: run.evaluate's last.pt scored on the validation split with run.overrides. Done
    once for a given source step and overrides (result.json)."""
    from pixelwise.engine.run import build_datasets
    from pixelwise.inference import build_inference

    source = root / slug(run.evaluate) / f"seed{seed}"
    state = json.loads((source / "train_state.json").read_text())
    done, settings = folder / "result.json", [*run.overrides, *overrides]
    if done.is_file():
        result = json.loads(done.read_text())
        if result.get("source_step") == state["step"] and result.get("overrides") == settings:
            _say(progress, f"  finished before: {done}")
            return result
    inference = build_inference(source / "last.pt", overrides=settings)
    ds = build_datasets(inference.cfg, inference.model, splits=("val",))["val"]
    start = time.perf_counter()
    metrics = inference.task.evaluate(inference.model, ds, inference.device, progress=progress)
    metrics["eval_seconds_per_image"] = (time.perf_counter() - start) / len(ds)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "val_metrics.json", metrics, what="validation metrics")
    result = {"run": run.name, "seed": seed, "budget": 0.0, "folder": str(folder), "evaluates": str(source),
              "source_step": state["step"], "overrides": settings, "steps": state["step"],
              "train_seconds": state["train_seconds"], "params": sum(p.numel() for p in inference.model.parameters()),
              "metrics": _scalars(metrics)}
    write_json(done, result, what="run result")
    return result


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or k in ("per_class_iou", "class_names")}


# Where a run's files are and how fast it computes, not what it computes; train.time_limit is the run's budget,
# compared with result.json's on its own (a longer budget continues a finished run).
_SAME_RUN_ANYWAY = ("output_dir", "data.root", "data.num_workers", "train.threads", "train.log_every",
                    "train.time_limit")


def _check_same_settings(folder: Path, cfg) -> None:
    """A run folder is re-used (skipped or resumed) only for the settings it was made with: ConfigError otherwise."""
    from pixelwise.config import load_config, to_dict
    from pixelwise.engine.trainer import config_changes

    stored = folder / "config.yaml"
    how = "use another --out, or delete the run folder to train it again"
    if not stored.is_file():
        raise ConfigError(f"run folder {str(folder)!r} holds a result.json but no config.yaml to compare this "
                          f"command's settings with; {how}")
    changes = config_changes(to_dict(load_config(stored)), cfg, str(stored))
    differ = sorted(k for k in changes if k not in _SAME_RUN_ANYWAY)
    if differ:
        listed = ", ".join(f"{k} ({changes[k][0]!r} there, {changes[k][1]!r} now)" for k in differ)
        raise ConfigError(f"run folder {str(folder)!r} holds a run made with other settings: {listed}; {how}")


LEVEL = 0.95  # of the claims' intervals: Student's t over the paired per-seed differences


def lower_is_better(metric: str) -> bool:
    from pixelwise.metrics import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER or metric.endswith("seconds_per_image")


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """Two-sided Student's t interval at `level` of the mean of `values`; None for fewer than 2."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean - half, mean + half


def verdict(differences: Sequence[float], lower: bool, level: float = LEVEL) -> dict:
    """The verdict on a claim "better beats worse" from its paired per-seed differences (better - worse).

    The mean difference with a two-sided Student's t interval at `level` over the seeds: `held` when the interval
    lies entirely on the paper's side of 0 (below it for a lower-is-better metric), `reversed` when entirely on the
    other side, else `inconclusive`; one seed gives no interval and is always inconclusive.
    """
    d = [float(x) for x in differences]
    if not d:
        return {"difference_mean": None, "interval": None, "seeds": 0, "verdict": "inconclusive"}
    mean, interval = statistics.fmean(d), t_interval(d, level)
    if interval is None:
        return {"difference_mean": mean, "interval": None, "seeds": 1, "verdict": "inconclusive"}
    low, high = interval
    side = (high < 0, low > 0) if lower else (low > 0, high < 0)
    return {"difference_mean": mean, "interval": [low, high], "seeds": len(d),
            "verdict": "held" if side[0] else "reversed" if side[1] else "inconclusive"}


SLOW = 0.75  # a time-budgeted seed with fewer steps than this share of its run's most is flagged


def slow_seeds(steps: list[int], share: float = SLOW) -> list[int]:
    """The seeds of one time-budgeted run that took fewer than `share` of the steps of its fastest seed: seeds of
    one recipe take about as many steps in the same wall time unless another job shared the CPU, which makes
    the run weaker for a reason that is not the claim's (delete such a seed's folder and run again)."""
    most = max(steps, default=0)
    return [s for s, n in enumerate(steps) if n < share * most]


def summarise(exp: Experiment, budget: float, seeds: int, results: dict) -> dict:
    lower = lower_is_better(exp.metric)

    def values(name: str, metric: str) -> list:
        return [results[(name, s)]["metrics"].get(metric) for s in range(seeds)]

    def stats(name: str, metric: str) -> tuple[float | None, float | None, list]:
        vals = [v for v in values(name, metric) if isinstance(v, (int, float))]
        if not vals:
            return None, None, vals
        return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, vals

    runs = []
    for r in exp.runs:
        mean, std, vals = stats(r.name, exp.metric)
        first = results[(r.name, 0)]
        runs.append({"run": r.name, "recipe": r.recipe, "overrides": [*exp.overrides, *r.overrides],
                     "budget": budget * r.share, "paper": r.paper, "mean": mean, "std": std, "values": vals,
                     "steps": [results[(r.name, s)]["steps"] for s in range(seeds)], "params": first["params"],
                     "extra": {m: stats(r.name, m)[0] for m in exp.extra_metrics}})
        timed = r.evaluate is None and r.images_of is None and budget * r.share > 0
        runs[-1]["slow_seeds"] = slow_seeds(runs[-1]["steps"]) if timed else []
    claims = []
    for c in exp.claims:
        metric = c.metric or exp.metric
        pairs = [(a, b) for a, b in zip(values(c.better, metric), values(c.worse, metric))
                 if isinstance(a, (int, float)) and isinstance(b, (int, float))]  # paired by seed
        claims.append({"better": c.better, "worse": c.worse, "paper": c.paper, "metric": metric,
                       "lower_is_better": lower_is_better(metric), "better_values": [a for a, _ in pairs],
                       "worse_values": [b for _, b in pairs], "differences": [a - b for a, b in pairs],
                       **verdict([a - b for a, b in pairs], lower_is_better(metric))})
    env = json.loads((Path(results[(exp.runs[0].name, 0)]["folder"]) / "environment.json").read_text())
    return {"experiment": exp.name, "title": exp.title, "source": exp.source, "notes": exp.notes, "metric": exp.metric,
            "lower_is_better": lower, "budget_per_run": budget, "budget_why": exp.budget_why if budget == exp.budget
            else "", "seeds": seeds, "level": LEVEL,
            "interval": "Student's t over the paired per-seed differences", "fast_path": list(FAST),
            "machine": f"{env['cpu']}{_amx(env.get('amx'))}, {env['cpu_count']} cores, {env['threads']} threads, "
                       f"torch {env['torch']}",
            "date": time.strftime("%Y-%m-%d"), "runs": runs, "claims": claims}


def _amx(amx: bool | None) -> str:
    return "" if amx is None else " with AMX" if amx else " without AMX"


def _v(x, scale: float = 1.0) -> str:
    return "n/a" if x is None else f"{x * scale:.4f}" if scale == 1 else f"{x * scale:.1f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def claim_text(c: dict) -> str:
    """The claim's measured difference: "+0.0517 [+0.0280, +0.0750]" (mean, interval), or why there is none."""
    if c["difference_mean"] is None:
        return "n/a"
    if c["interval"] is None:
        return f"{_signed(c['difference_mean'])} (one seed: no interval)"
    low, high = c["interval"]
    return f"{_signed(c['difference_mean'])} [{_signed(low)}, {_signed(high)}]"


def _rows(summary: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    m, seeds = summary["metric"], summary["seeds"]
    extra = list(summary["runs"][0]["extra"]) if summary["runs"] else []
    head = ["run", "budget (s)", "steps", "params (M)", f"{m}" + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else ""),
            *extra, "paper"]
    rows = [[r["run"], f"{r['budget']:.0f}", "/".join(str(s) for s in r["steps"]), f"{r['params'] / 1e6:.2f}",
             _v(r["mean"]) + (f" ± {_v(r['std'])}" if r["std"] is not None else ""),
             *[_v(r["extra"][e]) for e in extra], r["paper"]] for r in summary["runs"]]
    level = f"{summary.get('level', LEVEL):.0%}"
    chead = ["paper's claim", "paper", f"ours: difference, mean [{level} interval]", "seeds", "verdict"]
    crows = [[f"{c['better']} better than {c['worse']}" + (f" ({c['metric']})" if c["metric"] != m else ""),
              c["paper"], claim_text(c), str(c["seeds"]), c["verdict"]] for c in summary["claims"]]
    return head, rows, chead, crows


def _budget_why(summary: dict) -> str:
    return f" Budget: {summary['budget_why']}" if summary.get("budget_why") else ""


def _how(summary: dict) -> str:
    lower = " (lower is better)" if summary["lower_is_better"] else ""
    return (f"Score: final validation {summary['metric']}{lower}. A claim's difference is better - worse, paired by "
            f"seed; the interval is a two-sided {summary.get('level', LEVEL):.0%} {summary.get('interval', '')} "
            "interval. Verdict: held (the interval lies on the paper's side of 0), reversed (on the other side) or "
            "inconclusive.")


def summary_markdown(summary: dict) -> str:
    head, rows, chead, crows = _rows(summary)

    def table(h, rs):
        return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h), *("| " + " | ".join(r) + " |" for r in rs)])

    return (f"# {summary['experiment']}: {summary['title']}\n\n"
            f"Paper: {summary['source']}.\n\n"
            f"`pixelwise reproduce {summary['experiment']} --budget {summary['budget_per_run']:g} --seeds "
            f"{summary['seeds']}` ({summary['date']}, {summary['machine']}; fast path: {', '.join(summary['fast_path'])}). "
            f"{summary['notes']}{_budget_why(summary)}\n\n{_how(summary)}\n\n"
            f"{table(head, rows)}\n\n{table(chead, crows)}\n{_slow_note(summary)}")


def _slow_note(summary: dict) -> str:
    slow = [f"{r['run']} seed {s} ({r['steps'][s]} steps against {max(r['steps'])})"
            for r in summary["runs"] for s in r.get("slow_seeds", [])]
    if not slow:
        return ""
    return (f"\n**Warning:** {'; '.join(slow)} took fewer than {SLOW:.0%} of the steps of the run's fastest seed in "
            "the same time: another job probably shared the CPU. Delete those seeds' folders and run again.\n")


def seeds_figure(summary: dict) -> bytes:
    """Every run's score per seed with a t-interval of its mean, and every claim's paired differences."""
    from pixelwise.report.html import seeds_png

    level = summary.get("level", LEVEL)
    runs = [(r["run"], r["values"], t_interval(r["values"], level)) for r in summary["runs"]]
    claims = [(f"{c['better']} - {c['worse']}" + (f" ({c['metric']})" if c["metric"] != summary["metric"] else ""),
               c["differences"], c["interval"]) for c in summary["claims"]]
    return seeds_png(runs, claims, summary["metric"])


def summary_html(summary: dict, curves: bytes | None = None) -> str:
    import html

    from pixelwise.report.html import _img

    head, rows, chead, crows = _rows(summary)

    def table(h, rs):
        return ("<table><tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in h) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rs) + "</table>")

    figures = _img(seeds_figure(summary), "scores per seed and claims' differences",
                   "points: one seed each; diamonds: the mean with its interval")
    if curves:
        figures += _img(curves, "training curves of every seed", "every run and seed's log.csv, against training time")
    return (f"<p>Paper: {html.escape(summary['source'])}.</p><p class=\"note\">{html.escape(summary['notes'])} "
            f"Budget {summary['budget_per_run']:g} s per run, {summary['seeds']} seed(s), {html.escape(summary['machine'])}."
            f"{html.escape(_budget_why(summary))}"
            f"</p><p class=\"note\">{html.escape(_how(summary))}</p><h2>Summary</h2>{table(head, rows)}"
            f"<h3>The paper's claims</h3>{table(chead, crows)}"
            + (f"<p><strong>{html.escape(_slow_note(summary).strip().replace('**', ''))}</strong></p>"
               if _slow_note(summary) else "") + figures)


def reproduce_all(*, out="reproduce", names: Sequence[str] | None = None, progress: bool = True, **kwargs) -> Path:
    """Run (or resume) every experiment (or `names`), then write OUT/index.html, one page for all their claims."""
    summaries = []
    names = list(names or default_names())
    for k, name in enumerate(names, 1):
        _say(progress, f"=== experiment {k}/{len(names)}: {name}")
        summaries.append(reproduce(name, out=out, progress=progress, **kwargs))
    return write_overview(Path(out) / "index.html", summaries)


def write_overview(path: Path, summaries: Sequence[dict]) -> Path:
    """One page: every claim of every experiment in one table (the paper's figure, ours with its interval, the
    verdict), each row linking to its experiment's section (tables, seeds figure, link to its full report)."""
    import html

    from pixelwise.report.html import CSS, MARKER
    from pixelwise.report.run import check_report_path

    check_report_path(path)
    rows, sections = [], []
    for s in summaries:
        anchor = f"exp-{slug(s['experiment'])}"
        for c in s["claims"]:
            metric = c.get("metric") or s["metric"]
            rows.append(
                f'<tr><td class="l"><a href="#{anchor}">{html.escape(s["experiment"])}</a></td>'
                f'<td class="l">{html.escape(c["better"])} better than {html.escape(c["worse"])}</td>'
                f"<td>{html.escape(metric)}</td><td>{html.escape(c['paper'])}</td><td>{html.escape(claim_text(c))}</td>"
                f"<td>{c['seeds']}</td><td class=\"{c['verdict']}\">{c['verdict']}</td></tr>")
        report = Path(s["experiment"]) / "report.html"
        link = (f'<p><a href="{html.escape(report.as_posix())}">Every run of {html.escape(s["experiment"])}: curves, '
                "validation images, configs</a></p>" if (path.parent / report).is_file() else "")
        sections.append(f'<h2 id="{anchor}">{html.escape(s["experiment"])}: {html.escape(s["title"])}</h2>'
                        f"{summary_html(s)}{link}")
    held = sum(c["verdict"] == "held" for s in summaries for c in s["claims"])
    total = sum(len(s["claims"]) for s in summaries)
    level = f"{summaries[0].get('level', LEVEL):.0%}" if summaries else ""
    style = CSS + ".held{background:#e3f4e1}.reversed{background:#f8e0e0}.inconclusive{background:#f4f1dc}"
    page = [MARKER, "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>pixelwise reproduce: {len(summaries)} experiments</title><style>{style}</style></head><body>",
            f"<h1>pixelwise reproduce: the papers' claims re-run ({len(summaries)} experiments)</h1>",
            f"<p>{held} of {total} claims held, by a {level} t-interval over paired seeds that lies on the paper's "
            "side of 0; reversed: on the other side; inconclusive: the interval contains 0 (or one seed).</p>",
            '<table><tr><th class="l">experiment</th><th class="l">claim</th><th>metric</th><th>paper</th>'
            f"<th>ours: difference [{level} interval]</th><th>seeds</th><th>verdict</th></tr>{''.join(rows)}</table>",
            *sections, "</body></html>"]
    write_text(path, "\n".join(page) + "\n", what="report")
    return path
