"""Composition and validation: every option composes; bad input fails before training, in one line."""

from __future__ import annotations

import pytest

from conftest import CONFIGS, config_error, CUSTOM, group_options

GROUPS = ["optimizer", "scheduler", "warmup", "regularization", "early_stopping", "dataset", "model", "trainer",
          "lr_find", "report"]  # hparams_search is global (it sets hydra.sweeper): tests/test_sweeps.py composes it


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes_and_validates(compose, group, option):
    cfg = compose(f"{group}={option}", *(CUSTOM if (group, option) == ("scheduler", "custom") else []))
    assert group in cfg


RECIPE_GROUPS = ["optimizer", "scheduler", "warmup", "regularization"]
# mnist10k_fast's 20-step warmup is a key of warmup=linear, which warmup=none lacks: that pair fails in one line
UNCOMPOSABLE = {("mnist10k_fast", "warmup", "none")}


@pytest.mark.parametrize("group,option", [(g, o) for g in RECIPE_GROUPS for o in group_options(g)])
@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_option_composes_under_each_experiment(compose, experiment, group, option):
    """lrtrain -m +experiment=X optimizer=sgd,lion scheduler=constant,wsd regularization=none,...: a recipe's keys
    that only some options have live in the options it chooses (optimizer=nanogpt, scheduler=nanogpt, ...), so
    every option replaces them, with that option's own values."""
    from omegaconf import OmegaConf

    extra = CUSTOM if (group, option) == ("scheduler", "custom") else []
    if (experiment, group, option) in UNCOMPOSABLE:
        from lrtrain.errors import describe

        with pytest.raises(Exception) as e:
            compose(f"+experiment={experiment}", f"{group}={option}")
        assert describe(e.value)[0] == ("warmup.length: unknown key; warmup=none has no keys (options that have: "
                                        "constant, exponential, linear, nanogpt) (set by +experiment=mnist10k_fast)")
        return
    cfg = compose(f"+experiment={experiment}", f"{group}={option}", *extra)
    own = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
    set_by_recipe = OmegaConf.load(CONFIGS / "experiment" / f"{experiment}.yaml").get(group) or {}
    for key in own:
        if key == "defaults" or key in set_by_recipe or (option == "custom" and key == "_target_"):
            continue  # custom's _target_ is ??? (CUSTOM's)
        if OmegaConf.is_dict(own[key]):  # a regularizer: the keys its option sets (nanogpt's l2 sets one)
            assert {k: cfg[group][key][k] for k in own[key]} == own[key], f"{group}.{key}"
        else:
            assert cfg[group][key] == own[key], f"{group}.{key}"
    if group == "regularization":  # exactly the option's regularizers (the recipe's replaced)
        chosen = {k for k, v in cfg.regularization.items() if v is not None}
        assert chosen == {k for k in own if k != "defaults"} | set(own.get("defaults") or []) - {"_self_"}


def test_regularization_is_multi_select(compose):
    cfg = compose("regularization=[l2]")
    assert cfg.regularization.l2.weight_decay > 0


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be a finite number > 0, or auto"),
        ("dataset.batch_size=0", "dataset.batch_size=0: must be > 0"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
        ("trainer.device=tpu", "trainer.device='tpu': must be one of auto, cpu, cuda, mps"),
        ("regularization=[l2]", None),
    ],
)
def test_out_of_range_values_name_the_key(compose, override, needle):
    if needle is None:
        compose(override)
        return
    assert config_error(compose, override) == needle


@pytest.mark.parametrize(
    "args,message",
    [
        (["optimizer=adamm"], "lrtrain: error: optimizer=adamm: no such option; valid: adadelta, adafactor, "
                              "adagrad, adam, adamax, adamw, ademamix, adopt, amsgrad, cautious_adamw, dadapt_adam, "
                              "lion, mars, momentum, muon, nadam, nanogpt, prodigy, psgd_kron, radam, rmsprop, "
                              "schedulefree_adamw, schedulefree_sgd, sgd, shampoo, soap"),
        (["scheduler=custom"], "lrtrain: error: scheduler._target_: a value is required"),
        (["regularization=[l2,foo]"],
         "lrtrain: error: regularization=foo: no such option; valid: augment, dropout, grad_clip, l1, l2, "
         "label_smoothing, nanogpt, none"),
        (["optimizer.lrr=1"], "lrtrain: error: optimizer.lrr: unknown key; valid keys here: lr, betas, eps, amsgrad"),
        (["optimizer.lr=abc"], "lrtrain: error: optimizer.lr='abc': must be a finite number > 0, or auto"),
        (["optimizer.lr=-1"], "lrtrain: error: optimizer.lr=-1: must be a finite number > 0, or auto"),
        (["dataset.batch_size=0"], "lrtrain: error: dataset.batch_size=0: must be > 0"),
        (["scheduler=step", "scheduler.step_size=soon"],
         "lrtrain: error: scheduler.step_size='soon': must be a duration such as 5 (epochs), 5ep, 500steps or 10%"),
        (["trainer.monitor=val_f1"],
         "lrtrain: error: trainer.monitor='val_f1': must be one of train_loss, val_loss, train_acc, val_acc"),
        (["warmup=linear", "warmup.length=100ep"],
         "lrtrain: error: warmup.length='100ep': must be shorter than the run (900 steps)"),
    ],
)
def test_bad_config_fails_fast_with_one_line(lrtrain, args, message):
    r = lrtrain(*args)
    assert r.returncode == 2
    assert r.stderr.strip() == message
    assert not (r.run_dir / "steps.csv").exists() and not (r.run_dir / "checkpoints").exists()


# ------------------------------------------------------------------------------------------- non-finite


def _float_keys() -> list[tuple[tuple[str, ...], str, str]]:
    """(overrides choosing the option, full key, kind) for every float key of every registered option: each
    option file names its schema in its defaults list (regularization options are fields of one schema)."""
    import typing

    from omegaconf import OmegaConf

    from conftest import CONFIGS
    from lrtrain.config import RegularizationConfig, float_fields, schemas

    found: dict[str, tuple[tuple[str, ...], str]] = {}
    for group in GROUPS:
        for option in group_options(group):
            if group == "regularization":
                hints = typing.get_type_hints(RegularizationConfig)
                if option not in hints:
                    continue
                schema, prefix = typing.get_args(hints[option])[0], f"regularization.{option}."
                choice: tuple[str, ...] = (f"regularization=[{option}]",)
            else:
                node = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
                names = [d.split("@")[0].lstrip("/") for d in node.get("defaults", []) if str(d).endswith("@_here_")]
                if not names:
                    continue
                schema, prefix, choice = schemas()[names[0]], f"{group}.", (f"{group}={option}",)
            for name, kind in float_fields(schema).items():
                found.setdefault(f"{prefix}{name}", (choice, kind))
    return [(choice, key, kind) for key, (choice, kind) in sorted(found.items())]


FLOAT_KEYS = _float_keys()


def test_float_keys_cover_the_known_offenders():
    keys = {key for _, key, _ in FLOAT_KEYS}
    assert {"optimizer.eps", "early_stopping.divergence_threshold", "scheduler.gamma", "optimizer.betas",
            "regularization.l2.weight_decay", "dataset.val_fraction", "lr_find.max_lr"} <= keys
    assert len(keys) > 40


_composed: dict = {}


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("choice,key,kind", FLOAT_KEYS, ids=[k for _, k, _ in FLOAT_KEYS])
def test_non_finite_floats_are_refused(compose, choice, key, kind, bad):
    import copy

    from omegaconf import OmegaConf

    from lrtrain.config import validate
    from lrtrain.errors import ConfigValueError

    if choice not in _composed:  # compose each option once; each case changes one key of a copy
        _composed[choice] = compose(*choice)
    cfg = copy.deepcopy(_composed[choice])
    value = float(bad)
    if kind == "list":
        value = [0.5] * (len(OmegaConf.select(cfg, key)) - 1) + [value]
    OmegaConf.update(cfg, key, value)
    if key.endswith("growth_rate") and bad == "inf":  # its documented "no limit"
        validate(cfg)
        return
    with pytest.raises(ConfigValueError) as e:
        validate(cfg)
    valid = {"float": "a finite number", "optional": "a finite number, or null", "list": "finite numbers"}[kind]
    assert str(e.value).startswith(f"{key}=") and f": must be {valid}" in str(e.value), str(e.value)


@pytest.mark.parametrize("spelling", ["inf", ".inf"])  # Hydra's, and YAML's (as a config file writes it)
def test_non_finite_values_from_the_command_line_are_one_line(lrtrain, spelling):
    r = lrtrain(f"optimizer.eps={spelling}")
    assert (r.returncode, r.stderr.strip()) == (2, "lrtrain: error: optimizer.eps=inf: must be a finite number")


def test_yamls_non_finite_spellings_are_floats(compose):
    from lrtrain.config import yaml_floats
    from lrtrain.errors import ConfigValueError

    assert yaml_floats(["-m", "a=.inf", "b=[0.9, -.Inf]", "c=1e-3,.NaN", "+d=+.inf", "e='.inf'", "f=x.inf",
                        "hydra.run.dir=.inf"]) == ["-m", "a=inf", "b=[0.9,-inf]", "c=1e-3,nan", "+d=+inf",
                                                   "e='.inf'", "f=x.inf", "hydra.run.dir=.inf"]
    cfg = compose(*yaml_floats(["optimizer=prodigy", "optimizer.growth_rate=.inf"]))  # valid: "no limit"
    assert cfg.optimizer.growth_rate == float("inf")
    with pytest.raises(ConfigValueError) as e:
        compose(*yaml_floats(["optimizer.betas=[0.9,.nan]"]))
    assert str(e.value) == "optimizer.betas=[0.9, nan]: must be finite numbers"


# ------------------------------------------------------------------- keys of options that are not chosen


@pytest.mark.parametrize("overrides,message", [
    (["warmup.length=5ep"],
     "warmup.length: unknown key; warmup=none has no keys (options that have: constant, exponential, linear, nanogpt)"),
    (["warmup=none", "warmup.start_factor=0.5"],
     "warmup.start_factor: unknown key; warmup=none has no keys (options that have: constant, exponential, linear, nanogpt)"),
    (["scheduler.gamma=0.5"], "scheduler.gamma: unknown key; valid keys here: interval"),
    (["regularization.l2.weight_decay=0.1"],
     "regularization.l2.weight_decay: l2 is not enabled; add it: regularization=[l2]"),
    (["regularization=[dropout]", "regularization.l2.decoupled=true"],
     "regularization.l2.decoupled: l2 is not enabled; add it: regularization=[dropout,l2]"),
    (["logger.mlflow.tracking_uri=sqlite:///x.db"],
     "logger.mlflow.tracking_uri: mlflow is not enabled; add it: logger=[csv,tensorboard,mlflow]"),
    (["logger=[csv]", "logger.tensorboard.hparams=false"],
     "logger.tensorboard.hparams: tensorboard is not enabled; add it: logger=[csv,tensorboard]"),
    (["logger.tensorboard.hparam=false"], "logger.tensorboard.hparam: unknown key; valid keys here: hparams"),
    (["regularization=[l2]", "regularization.l2.decay=1"],
     "regularization.l2.decay: unknown key; valid keys here: weight_decay, decay_1d, decoupled"),
])
def test_a_key_the_chosen_option_does_not_have_is_refused(compose, overrides, message):
    from lrtrain.errors import EXIT_CONFIG, describe

    with pytest.raises(Exception) as e:
        compose(*overrides)
    assert describe(e.value) == (message, EXIT_CONFIG)


def test_option_not_enabled_is_one_line_from_the_cli(lrtrain):
    r = lrtrain("regularization.l2.weight_decay=0.1")
    assert (r.returncode, r.stderr.strip()) == (2, "lrtrain: error: regularization.l2.weight_decay: l2 is not "
                                                   "enabled; add it: regularization=[l2]")


def test_malformed_yaml_in_a_config_dir_names_the_file_and_line(lrtrain, tmp_path):
    mine = tmp_path / "conf" / "optimizer" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("_target_: torch.optim.Adam\nlr: [0.1\nbetas: :\n")
    r = lrtrain("--config-dir", str(tmp_path / "conf"), "optimizer=mine")
    assert (r.returncode, r.stderr.strip()) == (
        2, f"lrtrain: error: {mine}, line 3, column 6: not valid YAML (while parsing a flow sequence; expected ',' "
           "or ']', but got ':')")


def test_a_config_dirs_option_names_its_schema_by_class(lrtrain, tmp_path):
    """The schema named in a user's option file checks its keys and ranges as a built-in option's does."""
    mine = tmp_path / "conf" / "optimizer" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("defaults:\n  - /AdamConfig@_here_\n  - _self_\n_target_: torch.optim.Adam\nlr: 0.01\n"
                    "betas: [0.9, 0.99]\neps: 1.0e-08\namsgrad: false\n")
    r = lrtrain("--config-dir", str(tmp_path / "conf"), "optimizer=mine", "optimizer.betas=[0.9,1.5]")
    assert (r.returncode, r.stderr.strip()) == (2, "lrtrain: error: optimizer.betas=[0.9, 1.5]: must be two numbers "
                                                   "in [0, 1)")
    r = lrtrain("--config-dir", str(tmp_path / "conf"), "optimizer=mine", "optimizer.bettas=[0.9,0.9]")
    assert r.returncode == 2 and r.stderr.startswith("lrtrain: error: optimizer.bettas: unknown key; valid keys "
                                                     "here: lr, betas, eps, amsgrad")


@pytest.mark.parametrize("old,new", [("schema_optimizer_adam", "/AdamConfig@_here_"),
                                     ("schema_early_stopping_patience", "/PatienceConfig@_here_"),
                                     ("schema_trainer", "/TrainerConfig@_here_")])
def test_a_schema_named_the_old_way_says_its_class_name(lrtrain, tmp_path, old, new):
    mine = tmp_path / "conf" / "optimizer" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text(f"defaults:\n  - /{old}@_here_\n  - _self_\n_target_: torch.optim.Adam\nlr: 0.01\n")
    r = lrtrain("--config-dir", str(tmp_path / "conf"), "optimizer=mine")
    assert (r.returncode, r.stderr.strip()) == (
        2, f"lrtrain: error: optimizer/mine.yaml: {old} is no longer a schema's name; schemas go by their class "
           f"name: {new} (lrtrain/config.py)")
