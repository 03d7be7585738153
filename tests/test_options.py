"""Options declared once: every field of a script's options is a flag of that script, every flag
a field, and every training setting is stored in each checkpoint. A new option is a field (and
its use); these tests fail when one is not wired to the command line or not stored."""
import argparse
import dataclasses
import importlib
import typing

import pytest
import torch

from coco4 import options
from coco4.annotation_lists import ListsOptions
from coco4.config import Recipe, RunOptions, TrainConfig
from coco4.evaluation import EvaluateOptions
from coco4.exporting import ExportOptions
from coco4.file_predictions import PredictOptions
from coco4.pictures import PictureOptions
from coco4.serving import ServeOptions

WHEN_TO_STOP = {"epochs", "patience"}  # recipe settings a resume takes from the command line
SCRIPTS = {"train": TrainConfig, "evaluate": EvaluateOptions, "visualize": PictureOptions,
           "predict": PredictOptions, "export": ExportOptions,
           "annotation_prepare": ListsOptions, "serve": ServeOptions}


def element_type(hint) -> type:
    """The type of one value of an option: X for X, ``X | None``, ``tuple[X, ...]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return element_type(args[0]) if args else hint


def other_value(field: dataclasses.Field, hint, parser: argparse.ArgumentParser):
    """A value of the field's type that is not its default, and the words that give it."""
    action = next(a for a in parser._actions if a.dest == field.name)
    default, flag = action.default, action.option_strings[:1]
    if isinstance(action, argparse.BooleanOptionalAction):
        return not default, [("--no-" if default else "--") + field.name.replace("_", "-")]
    kind = element_type(hint)
    if action.choices:
        one = next(c for c in action.choices if c != default)
    elif field.name == "device":  # checked against the device names
        one = "cpu"
    elif field.name == "lr_min":  # a floor below --lr's default
        one = 1e-6
    elif kind is int:
        one = (default or 0) + 3
    elif kind is float:  # fractions and rates stay in their ranges
        one = default / 2 if default else 0.5
    else:
        one = kind("some/where")
    if action.nargs in ("+", "*"):
        return (one, kind("else/where")), [*flag, str(one), "else/where"]
    return one, [*flag, str(one)]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_field_is_a_flag_and_every_flag_a_field(script):
    cls, parser = SCRIPTS[script], importlib.import_module(script).get_args_parser()
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    presets = {parser.presets.name} if isinstance(parser, options.PresetParser) else set()
    assert flags == {f.name for f in dataclasses.fields(cls)} | presets
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        value, words = other_value(field, hints[field.name], parser)
        opts = options.from_args(cls, parser.parse_args(words))
        got = getattr(opts, field.name)
        assert got == value and got != getattr(cls(), field.name), (field.name, words, got)


def test_every_training_setting_is_stored_in_each_checkpoint(trained_run):
    """The recipe as ``config`` (what a resume takes back), the run options apart, and the
    two together every field of TrainConfig: each flag of train.py is in the file."""
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(trained_run / name, weights_only=True)
        recipe, run = ckpt["config"], ckpt["run_options"]
        assert set(recipe) == {f.name for f in dataclasses.fields(Recipe)}
        assert set(run) == {f.name for f in dataclasses.fields(RunOptions)}
        assert not set(recipe) & set(run)
        # and read back into the same configuration
        both = {**recipe, **run}
        assert TrainConfig.from_dict(both).to_dict() == {
            f.name: both[f.name] for f in dataclasses.fields(TrainConfig)}


def test_a_resumed_run_keeps_each_stored_setting_and_takes_this_machines_runtime_ones(
        trained_run):
    """Every field, changed on the command line of a resume: a setting of the recipe keeps its
    stored value (and is named as ignored), a run option (and when to stop: --epochs, the
    total, and --patience) takes the new value; a stored run option this machine would
    refuse (--workers 100 from a bigger one, as an older coco4 stored them) is never
    checked."""
    stored = {**torch.load(trained_run / "last.pt", weights_only=True)["config"], "workers": 100}
    parser, hints = importlib.import_module("train").get_args_parser(), typing.get_type_hints(
        TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        value, _ = other_value(field, hints[field.name], parser)
        cfg, ignored = TrainConfig.from_dict({field.name: value}).resumed_from(stored)
        if field.name in {f.name for f in dataclasses.fields(RunOptions)} | WHEN_TO_STOP:
            assert getattr(cfg, field.name) == value and not ignored, field.name
        else:
            assert getattr(cfg, field.name) == stored[field.name], field.name
            assert ignored == ({} if value == stored[field.name] else {field.name: value})


def test_the_help_shows_each_default_once_and_never_none():
    for script in SCRIPTS:
        text = importlib.import_module(script).get_args_parser().format_help()
        assert "(default: None)" not in text, script
        for entry in text.split("\n  -")[1:]:  # one option's entry
            assert entry.count("(default") <= 1, (script, entry)


def test_an_undeclared_field_is_refused_when_the_parser_is_built():
    @dataclasses.dataclass
    class Forgotten:
        declared: int = options.option(1, "a declared option")
        plain: int = 2

    with pytest.raises(TypeError, match="Forgotten.plain is not declared with options.option"):
        options.parser("x", Forgotten)


def test_the_resume_command_gives_back_the_runtime_settings():
    """to_argv is the inverse of the parser: the words it writes parse to the same values."""
    cfg = TrainConfig(epochs=9, workers=1, compile=True, cache_dir="c", device="cpu")
    names = ("epochs", "workers", "compile", "cache_dir", "device", "train_list")
    words = options.to_argv(cfg, names)
    again = options.from_args(TrainConfig, options.parser("x", TrainConfig).parse_args(words))
    assert {n: getattr(again, n) for n in names} == {n: getattr(cfg, n) for n in names}
    assert "--train-list" not in words  # None: the default, left out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_command_a_tool_prints_parses_back_to_its_settings(script):
    """to_argv writes the commands the tools print (the resume command, the demo's steps):
    each field, several values included, parsed back gives the same setting (#35)."""
    cls, parser = SCRIPTS[script], importlib.import_module(script).get_args_parser()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata["positional"]:
            continue
        _, words = other_value(field, hints[field.name], parser)
        opts = options.from_args(cls, parser.parse_args(words))
        again = options.from_args(cls, parser.parse_args(options.to_argv(opts, [field.name])))
        assert getattr(again, field.name) == getattr(opts, field.name), field.name


def test_the_resume_command_after_a_resume_into_another_folder_parses_back(demo_data,
                                                                           tmp_path,
                                                                           monkeypatch):
    """Run a in folder a, resumed into folder b and stopped there: the command it prints
    continues b's last.pt in b, with the run options given (#35)."""
    import shlex

    from coco4.interrupt import Interrupted, StopRequest
    from coco4.trainer import fit

    import train
    from conftest import train_args

    fit(train_args(demo_data, tmp_path / "a", epochs=1), progress=False)
    polls = []
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: polls.append(1) or
                                                           len(polls) > 2))
    with pytest.raises(Interrupted) as stopped:
        fit(train_args(demo_data, tmp_path / "b", epochs=3, workers=0,
                       resume=str(tmp_path / "a" / "last.pt")), progress=False)
    command = str(stopped.value).split("Continue with: ", 1)[1]
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"] or words[1].endswith("train.py")
    cfg = options.from_args(TrainConfig, train.get_args_parser().parse_args(words[2:]))
    assert cfg.resume == str(tmp_path / "b" / "last.pt")
    assert cfg.output_dir == str(tmp_path / "b") and cfg.epochs == 3 and cfg.device == "cpu"
