import pytest

from pixelwise.config import Config, ConfigError, apply_override, load_config, save_config


def test_defaults_and_roundtrip(tmp_path):
    cfg = load_config(None, ["train.lr=1e-3", "model.args.base_width=8", "data.augment.elastic=true"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model.args == {"base_width": 8}
    assert cfg.data.augment.elastic is True
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_yaml_scientific_notation_string_becomes_float(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: 1e-4\n  max_steps: 10\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 10


def test_misspelt_key_in_file_names_file_and_suggests(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 0.1\n  btach_size: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert "c.yaml" in str(e.value) and "train.learning_rate" in str(e.value)


def test_misspelt_override_suggests_nearest():
    with pytest.raises(ConfigError, match=r"did you mean train\.batch_size"):
        apply_override(Config(), "train.btach_size=2")


def test_wrong_type_and_choice_are_reported():
    with pytest.raises(ConfigError, match=r"train\.batch_size.*'two'.*expected int"):
        apply_override(Config(), "train.batch_size=two")
    with pytest.raises(ConfigError, match=r"'adamw'.*expected one of 'sgd', 'adam', 'rmsprop'"):
        apply_override(Config(), "train.optimizer=adamw")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override(Config(), "train.lr")


def test_null_override_for_optional():
    cfg = Config()
    apply_override(cfg, "train.max_steps=5")
    apply_override(cfg, "train.max_steps=null")
    assert cfg.train.max_steps is None


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_files_that_would_load_silently_wrong_are_refused(tmp_path):
    from pixelwise.config import ConfigError

    dup = tmp_path / "dup.yaml"
    dup.write_text("train: {lr: 0.5}\ntrain: {batch_size: 1}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: key 'train' appears twice in one mapping \(lines 1 and 2\)"):
        load_config(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty"):
        load_config(empty)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text \(byte 0xff at position 0\)"):
        load_config(binary)


def test_range_errors_name_the_override_that_set_the_value(tmp_path):
    from pixelwise.config import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"^override 'train.lr=-1': train.lr=-1.0, expected a positive number"):
        load_config(recipe, ["train.lr=-1"])
    recipe.write_text("train: {lr: -0.1}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: train.lr=-0.1"):
        load_config(recipe, ["train.batch_size=2"])


def test_replacing_model_args_warns_about_what_is_dropped(tmp_path):
    from pixelwise.config import ConfigWarning

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {args: {base_width: 16, batch_norm: true}}\n")
    with pytest.warns(ConfigWarning, match="the recipe's batch_norm fall back to the model's defaults"):
        cfg = load_config(recipe, ["model.args={base_width: 4}"])
    assert cfg.model.args == {"base_width": 4}
    assert load_config(recipe, ["model.args.base_width=4"]).model.args == {"base_width": 4, "batch_norm": True}


def test_fast_path_benchmark_variants_override_the_recipes_own_precision(monkeypatch):
    # The CPU recipes train in bf16 + channels_last; benchmarks/fast_path.py's "fp32" baseline must still be fp32.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root))
    from benchmarks.fast_path import RECIPES, VARIANTS, _cfg

    want = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16 + channels_last": ("bf16", True)}
    for recipe in RECIPES:
        assert load_config(root / "configs" / f"{recipe}.yaml").train.precision == "bf16", recipe
        for name, overrides in VARIANTS.items():
            t = _cfg(recipe, Path("unused"), overrides).train
            assert (t.precision, t.channels_last) == want[name], (recipe, name)


def test_every_bundled_recipe_loads_and_agrees_with_its_dataset():
    """Registry-wide: each recipe's keys and values are valid, its model is registered, and the model's
    classes are the dataset's (checked without reading any dataset file)."""
    from pixelwise.config import bundled_recipes
    from pixelwise.data import dataset_meta
    from pixelwise.engine.tasks import build_task
    from pixelwise.registry import list_models

    recipes = bundled_recipes()
    assert {"mask_rcnn_r50_fpn_cityscapes", "unet_phc_u373", "unet_dic_hela"} <= {p.stem for p in recipes}
    for path in recipes:
        cfg = load_config(path)
        assert cfg.model.name in list_models(), path
        meta = dataset_meta(cfg.data)
        if meta["num_classes"] is not None:
            assert meta["num_classes"] == cfg.model.num_classes, path
        build_task(cfg).check_config(meta)
