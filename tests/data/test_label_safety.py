"""Labels that would train silently wrong: 0/255 binary masks, quantised colour masks, weight maps off ISBI."""
import json

import numpy as np
import pytest
from PIL import Image

from pixelwise.config import ConfigError, load_config
from pixelwise.data import CocoInstances, DataError, FolderDataset, build_dataset
from pixelwise.data.folder import default_palette
from pixelwise.engine.tasks.semantic import check_training_labels
from pixelwise.engine.run import build_run
from pixelwise.engine.trainer import train


def _binary_folder(root, n=4, size=40, foreground=255):
    """Blobs on a grey background; masks 0 = background and `foreground` for the blobs."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            for _ in range(3):
                y, x = rng.integers(5, size - 12, 2)
                mask[y:y + 8, x:x + 8] = foreground
            image = (rng.random((size, size)) * 60 + (mask > 0) * 150).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
    return root


def _folder_cfg(tmp_path, root, *extra):
    return load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.root={root.parent}", f"data.path={root.name}",
                              "data.dataset=folder", "data.num_classes=2", "data.mean=[0.5]", "data.std=[0.5]",
                              "model.name=unet_padded", "model.args={base_width: 4, depth: 2, in_channels: 1}",
                              "train.max_steps=2", "train.batch_size=2", "train.device=cpu", *extra])


def test_binary_masks_stored_as_0_255_are_refused_with_the_mapping_to_use(tmp_path):
    root = _binary_folder(tmp_path / "blobs")
    with pytest.raises(DataError, match=r"hold only class 0 and ignore_index=255.*-o data.label_map=\{255: 1\}"):
        train(_folder_cfg(tmp_path, root), progress=False)
    state = train(_folder_cfg(tmp_path, root, "data.label_map={255: 1}"), progress=False)
    assert state.step == 2 and state.metrics["per_class_iou"][1] is not None  # foreground is scored, not void


def test_masks_without_any_foreground_are_refused(tmp_path):
    root = _binary_folder(tmp_path / "empty", foreground=0)
    ds = build_dataset(_folder_cfg(tmp_path, root).data, "train")
    with pytest.raises(DataError, match=r"the 4 training masks .* hold only class 0: no pixel of the other 1 classes"):
        check_training_labels(ds, 2, progress=False)


def test_a_colour_mask_quantised_to_palette_mode_is_read_by_its_colours(tmp_path):
    root = tmp_path / "voc_like"
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True)
    voc = default_palette(3)
    classes = np.zeros((6, 6), np.uint8)
    classes[:, 3:] = 2
    classes[4:, :] = 1
    rgb = np.asarray(voc, np.uint8)[classes]
    quantised = Image.fromarray(rgb).quantize(colors=3)  # indices in the quantiser's order, not the classes'
    assert not np.array_equal(np.asarray(quantised), classes)
    quantised.save(root / "train" / "masks" / "a.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "train" / "images" / "a.png")
    ds = FolderDataset(root, split="train", num_classes=3)
    assert np.array_equal(ds[0][1]["mask"].numpy(), classes)

    other = Image.fromarray(classes, mode="P")
    other.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 759)  # colours of no class
    other.save(root / "train" / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a\.png' is a palette PNG whose index 0 has colour \(10, 20, 30\).*without the palette"):
        ds[0]
    ramp = Image.fromarray(classes, mode="P")
    ramp.putpalette([v for i in range(256) for v in (i, i, i)])  # a grey ramp has no colours: indices are classes
    ramp.save(root / "train" / "masks" / "a.png")
    assert np.array_equal(ds[0][1]["mask"].numpy(), classes)


def test_weight_map_works_on_any_two_class_dataset_and_is_refused_elsewhere(tmp_path, camvid_dir):
    root = _binary_folder(tmp_path / "blobs", foreground=1)
    cfg = _folder_cfg(tmp_path, root, "data.weight_map=true")
    ds = build_dataset(cfg.data, "train")
    image, target = ds[0]
    weight, mask = target["weight"].numpy(), target["mask"].numpy()
    assert weight.shape == mask.shape and weight.max() > 2  # the border term between touching blobs
    assert "weight" not in build_dataset(cfg.data, "val")[0][1]
    camvid = load_config(None, ["data.dataset=camvid", f"data.root={camvid_dir.parent}", "data.weight_map=true"])
    with pytest.raises(ConfigError, match="weight_map=true needs a two-class .* 'camvid' has 11 classes"):
        build_dataset(camvid.data, "train")
    coco = load_config(None, ["data.dataset=isbi_instances", "data.weight_map=true",
                              "model.name=mask_rcnn_r18_fpn", "model.num_classes=1"])
    with pytest.raises(ConfigError, match="weight_map=true is for semantic models"):
        build_run(coco, splits=())  # the instance task refuses it before any file is read


def _coco(tmp_path, images, annotations):
    (tmp_path / "img").mkdir(exist_ok=True)
    for img in images:
        Image.fromarray(np.zeros((img.pop("real", (img["height"], img["width"])) + (3,)), np.uint8)).save(
            tmp_path / "img" / img["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path, tmp_path / "img"


def _ann(i, image_id, box=(2, 2, 10, 10)):
    x, y, w, h = box
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": list(box), "iscrowd": 0, "area": w * h,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def test_coco_duplicate_ids_empty_annotations_and_wrong_sizes_are_named(tmp_path):
    images = [{"id": 7, "file_name": "a.png", "height": 20, "width": 20},
              {"id": 7, "file_name": "b.png", "height": 20, "width": 20}]
    with pytest.raises(DataError, match=r"lists image ids \[7\] more than once"):
        CocoInstances(*_coco(tmp_path, images, [_ann(1, 7)]))
    with pytest.raises(DataError, match="has no annotations at all"):
        CocoInstances(*_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}], []))
    # The JSON says 20x20 but the file is 40x60: the box at x=30 looks degenerate, the size is the real problem.
    wrong = [{"id": 1, "file_name": "c.png", "height": 20, "width": 20, "real": (40, 60)}]
    with pytest.raises(DataError, match=r"c\.png' is 40x60 \(H x W\) but .*says 20x20 for image id 1"):
        CocoInstances(*_coco(tmp_path, wrong, [_ann(1, 1, box=(30, 25, 10, 10))]))


def test_a_coco_split_with_absolute_paths_needs_no_coco_folder_under_the_root(tmp_path):
    path, images = _coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}], [_ann(1, 1)])
    cfg = load_config(None, ["data.dataset=coco", f"data.root={tmp_path / 'empty_root'}",
                             f"data.train_split={path}:{images}"])
    ds = build_dataset(cfg.data, "train")
    assert len(ds) == 1 and ds[0][1]["labels"].tolist() == [1]


def test_tiny_and_thin_images_train_and_predict(tmp_path):
    import torch
    from torchvision import tv_tensors

    from pixelwise.data.transforms import RandomCrop
    from pixelwise.models.mask_rcnn import resize_image

    for h, w in ((1, 1), (1, 7), (5, 1)):
        image = tv_tensors.Image(torch.rand(1, h, w))
        mask = tv_tensors.Mask(torch.ones(h, w, dtype=torch.int64))
        out, target = RandomCrop(8, ignore_index=255)(image, {"mask": mask})
        assert out.shape == (1, 8, 8) and target["mask"].dtype == torch.int64
        assert set(target["mask"].unique().tolist()) <= {1, 255}  # the padding is ignored, never a class
    resized, _ = resize_image(torch.rand(3, 1, 600), 128, 128)
    assert min(resized.shape[-2:]) >= 1  # not the 0-pixel side torchvision's arithmetic gives


def test_exif_orientation_frames_and_palette_inputs(tmp_path):
    from pixelwise.data import read_image

    picture = np.zeros((20, 30, 3), np.uint8)
    picture[:5] = 255  # a bright top band, 20 rows x 30 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(picture).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "rot.jpg", channels=3)
    assert image.shape == (3, 30, 20)  # as a viewer shows it
    assert image[:, :, -5:].mean() > 0.9 and image[:, :, :5].mean() < 0.1  # the band is now on the right

    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"stack.tif' has 2 frames .* expected a single image"):
        read_image(tmp_path / "stack.tif", channels=1)

    Image.fromarray(picture).quantize(colors=4).save(tmp_path / "pal.png")
    rgb = read_image(tmp_path / "pal.png", channels=3)  # a palette image is a colour image: read as RGB
    assert rgb.shape == (3, 20, 30) and rgb[:, :5].min() == 1.0
    with pytest.raises(DataError, match=r"colour image, and the model takes grayscale: train it with "
                                         r"model.args.in_channels=3"):
        read_image(_coloured(tmp_path), channels=1)


def _coloured(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).quantize(colors=2).save(tmp_path / "red.png")
    return tmp_path / "red.png"


def test_coco_polygons_outside_the_image_and_skip_invalid_from_the_config(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}]
    outside = dict(_ann(2, 1), segmentation=[[30, 30, 40, 30, 40, 40]])
    path, folder = _coco(tmp_path, images, [_ann(1, 1), outside])
    with pytest.raises(DataError, match=r"annotation id 2 .*polygons lie outside the 20x20 image.*-o data.skip_invalid=true"):
        CocoInstances(path, folder)
    cfg = load_config(None, ["data.dataset=coco", f"data.train_split={path}:{folder}", "data.skip_invalid=true"])
    with pytest.warns(UserWarning, match="skipped 1 invalid annotation"):
        ds = build_dataset(cfg.data, "train")
    assert ds[0][1]["ann_ids"].tolist() == [1]
