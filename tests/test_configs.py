"""Every config composes, and what it names can be built: each entry point's primary config, and
each option of each config group composed into ``train`` (as lightning-hydra-template's
test_configs does), with the objects instantiated as a job would (nothing trained, no libvmaf)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra import compose as hydra_compose
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object, instantiate
from lightning import Trainer
from omegaconf import OmegaConf

from tinyvmaf.cache import TeacherCache
from tinyvmaf.data import LosoDataModule
from tinyvmaf.export import with_arch
from tinyvmaf.model import TinyVmafModule, count_params
from tinyvmaf.search import distribution
from tinyvmaf.tracking import Tracking

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


PRIMARIES = ["train", "evaluate", "export", "export_v1", "score", "build_cache", "make_folds"]


# What a group's option needs from the user before it can be built (their ??? values).
REQUIRED = {
    "corpus/directory": ["corpus.root={tmp}"],
    "corpus/dataset_file": ["corpus.path={tmp}/dataset.py"],
    "libvmaf/cli": ["libvmaf.path=/opt/vmaf/build/tools/vmaf"],
}


# The smallest dataset file: a corpus of it is read when it is built.
DATASET = """dataset_name = 'D'
yuv_fmt = 'yuv420p'
width = 64
height = 48
ref_videos = [{'content_id': 0, 'content_name': 'A', 'path': 'a.yuv'}]
dis_videos = [{'content_id': 0, 'asset_id': 1, 'path': 'a1.yuv'}]
"""


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


GROUPS = ["arch", "corpus", "data", "libvmaf", "model", "model/loss", "teacher", "trainer", "tracking", "fold"]


OPTIONS = [(g, o) for g in GROUPS for o in options(g)] + [("experiment", o) for o in options("experiment")]


def composed(name: str, *overrides: str, hydra: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("name", PRIMARIES)
def test_every_entry_points_config_composes_and_resolves(name):
    # make_folds writes beside the config folder Hydra ran from: known only at run time
    cfg = composed(name, *(["fold_dir=/tmp/folds"] if name == "make_folds" else []))
    if name.startswith("export"):  # each shipped model's recipe resolves with its own arch (tinyvmaf.export.with_arch)
        cfg = with_arch(cfg, next(iter(cfg.exports.values())).arch)
    OmegaConf.resolve(cfg)


def test_the_option_list_covers_every_group_folder():
    # configs/fold/<corpus>/ are users' fold options (make_folds.py), ignored by git
    folders = {
        str(p.parent.relative_to(CONFIGS))
        for p in CONFIGS.rglob("*.yaml")
        if p.parent != CONFIGS and p.parent.parent != CONFIGS / "fold"
    }
    tested = {*GROUPS, "experiment", "hparams_search", "hydra/launcher", "hydra/sweeper", "cache", "paths"}
    assert folders <= tested | {"hydra"}, folders - tested


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_each_option_builds_what_it_names(group, option, tmp_path):
    (tmp_path / "dataset.py").write_text(DATASET)
    required = [o.format(tmp=tmp_path) for o in REQUIRED.get(f"{group}/{option}", [])]
    cfg = composed("train", f"{group}={option}", *required, f"paths.data_dir={tmp_path}")
    OmegaConf.resolve(cfg)
    corpus, cache = instantiate(cfg.corpus), instantiate(cfg.cache)
    assert isinstance(corpus.name, str) and callable(corpus.pairs) and isinstance(cache, TeacherCache)
    assert isinstance(instantiate(cfg.tracking), Tracking)
    assert count_params(instantiate(cfg.arch.net)) > 0
    assert isinstance(instantiate(cfg.model), TinyVmafModule)
    data = instantiate(cfg.data, corpus=corpus, cache=cache, teacher=cfg.teacher.model, seed=cfg.seed, heldout=None)
    assert isinstance(data, LosoDataModule)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return  # Lightning refuses a GPU Trainer on a machine without one: tests/test_stacked.py runs it where there is
    assert isinstance(instantiate(cfg.trainer), Trainer)


@pytest.mark.parametrize("search", options("hparams_search"))
def test_each_search_composes_into_a_study_and_a_space(search):
    cfg = composed("train", f"hparams_search={search}", hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("TinyvmafOptunaSweeper") and sweeper.study_name == cfg.sweep_id
    space = {key: distribution(key, str(spec)) for key, spec in sweeper.params.items()}
    assert space and str(cfg.fold.heldout) == "all"
    instantiate(sweeper.sampler), instantiate(sweeper.pruner)


def targets(node, key: str = ""):
    """Every (key, dict) below ``node`` (plain containers) that has a ``_target_``."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            yield from targets(v, f"{key}.{k}".strip("."))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from targets(item, f"{key}[{i}]")


def test_the_slurm_example_composes_onto_the_submitit_plugin(repo):
    with initialize_config_dir(config_dir=str(repo / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.cpus_per_task, launcher.array_parallelism) == ("cpu", 1, 64)
    bases = [c.__name__ for c in get_object(launcher._target_).__mro__]  # Hydra loads plugins as modules of its own
    assert {"SlurmLauncher", "SubmititVerdict"} <= set(bases) and launcher.cancel_jobs_on_exit is True
    assert not launcher.setup  # nothing relative to the launch folder: jobs run this Python by its absolute path


@pytest.mark.parametrize(
    "group",
    [
        "arch",
        "fold",
        "teacher",
        "trainer",
        "corpus",
        "libvmaf",
        "data",
        "model",
        "model/loss",
        "tracking",
        "experiment",
    ],
)
def test_every_option_of_every_group_composes_and_names_real_targets(group, compose, repo):
    """Each ``_target_`` imports, and its options are parameters it takes: a typo in either fails here."""
    for option in options(group):
        extra = {
            "corpus": {"directory": ["corpus.root=/x"], "dataset_file": ["corpus.path=/x"]},
            "libvmaf": {"cli": ["libvmaf.path=/x"]},
        }
        cfg = compose("train", f"{group}={option}", *extra.get(group, {}).get(option, []))
        if group != "experiment":
            assert OmegaConf.select(cfg, group.replace("/", ".")) is not None
        found = list(targets(OmegaConf.to_container(cfg, resolve=True)))
        assert len(found) >= 8  # corpus, libvmaf, cache, data, augment, model, loss, optimizer, trainer, tracking...
        for key, node in found:
            target = get_object(node["_target_"])
            options_given = {k: None for k in node if not str(k).startswith("_")}
            try:
                inspect.signature(target).bind_partial(**options_given)
            except TypeError as exc:
                pytest.fail(
                    f"{group}={option}: {key} ({node['_target_']}) does not take {sorted(options_given)}: {exc}"
                )


def test_fold_options_are_the_default_corpus_sources(repo):
    sources = yaml.safe_load((repo / "configs" / "corpus" / "default.yaml").read_text())["sources"]
    assert options("fold") == sorted(sources)


def test_the_shipped_recipe_is_each_archs_own_in_training_and_export(compose):
    """experiment=shipped: each arch trains with its own search's values, an arch without them with
    the default's, the command line still wins, and export.py trains each model with its arch's."""
    recipe = compose("train", "experiment=shipped").recipe
    assert recipe.mlp_small.lr != recipe.mlp_medium.lr and recipe.mlp_small.epochs != recipe.mlp_medium.epochs
    for arch, values in (
        ("mlp_small", recipe.mlp_small),
        ("mlp_medium", recipe.mlp_medium),
        ("linear", recipe.default),
    ):
        cfg = compose("train", "experiment=shipped", f"arch={arch}")
        assert (cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay, cfg.trainer.max_epochs) == (
            values.lr,
            values.weight_decay,
            values.epochs,
        )
        assert cfg.model.scheduler.max_lr == values.lr and cfg.data.augment.amount == values.augment.amount
    assert compose("train", "experiment=shipped", "arch=mlp_medium", "trainer.max_epochs=7").trainer.max_epochs == 7
    export = compose("export")
    for name, arch in (("vmaf_tiny_v1", "mlp_small"), ("vmaf_tiny_v1_medium", "mlp_medium")):
        cfg = with_arch(export, export.exports[name].arch)
        assert cfg.arch.name == arch and cfg.trainer.max_epochs == recipe[arch].epochs
        assert cfg.model.optimizer.lr == recipe[arch].lr and instantiate(cfg.model.net)[0].out_features == (
            16 if arch == "mlp_small" else 64
        )


def test_the_v1_exports_are_named_after_their_teacher_and_trained_with_the_v1_recipe(compose):
    """export.py --config-name export_v1 teacher=X: files and registered names begin with X (never to
    be taken for vmaf_tiny_v1), each arch trained on corpus=v1 with experiment=shipped_v1's values."""
    from tinyvmaf.export import shipped

    export = compose("export_v1", "teacher=vmaf_v1.0.16_5d0h")
    names = [(name, str(output), arch.name) for name, output, arch in shipped(export)]
    assert names == [
        ("vmaf_v1.0.16_5d0h_tiny_small", "models/v1.0.16/vmaf_v1.0.16_5d0h_tiny_small.onnx", "mlp_small"),
        ("vmaf_v1.0.16_5d0h_tiny_medium", "models/v1.0.16/vmaf_v1.0.16_5d0h_tiny_medium.onnx", "mlp_medium"),
    ]
    assert list(export.teacher_exports) == ["vmaf_v1.0.16_5d0h"] and export.teacher_output_dir == "models/v1.0.16"
    recipe = compose("train", "experiment=shipped_v1").recipe
    for _, _, arch in shipped(export):
        cfg = with_arch(export, arch)
        assert (cfg.corpus.name, cfg.experiment_name, cfg.teacher.display) == ("v1", "shipped_v1", [1920, 1080])
        assert cfg.trainer.max_epochs == recipe[arch.name].epochs and cfg.model.optimizer.lr == recipe[arch.name].lr
