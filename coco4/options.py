"""Options declared once. A dataclass field holds an option's name, type, default and help text,
and a script's command line is generated from the dataclasses it takes (litgpt builds its
command line from its dataclasses the same way): a field cannot exist without its flag, nor a
flag without its field, and the two cannot drift apart.

    @dataclass(frozen=True)
    class Options:
        epochs: int = option(70, "total epochs")
        device: str = option("auto", "cpu, cuda or auto", choices=("auto", "cpu", "cuda"))

    parser = options.parser("What the script does.", Options)      # --epochs, --device
    opts = options.from_args(Options, parser.parse_args())

The flag is the field's name with dashes (``--batch-size`` for ``batch_size``); a bool is a
``--x/--no-x`` pair; ``X | None`` takes an X and defaults to None (its help says what None
falls back to); ``list[X]`` takes one or more values (``nargs``).

Bounds sit next to the field (``option(0.1, "...", above=0, below=1)``), and ``check(values)``
(called from a dataclass's ``__post_init__``) refuses a value of the wrong type, outside its
choices or its bounds with one line naming the flag and what it got: a value read back from a
checkpoint is held to the same rules as one typed on the command line.
"""
import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence

from .errors import Coco4Error

# --help shows each option's default once: argparse's formatter adds "(default: ...)", except
# where the default is None (the help text says what it falls back to) or the text says already
DEFAULT_SHOWN = "(default"


def option(default=dataclasses.MISSING, help: str = "", *, factory: Callable | None = None,
           choices: Sequence | Callable[[], Sequence] | None = None, nargs: str | None = None,
           positional: bool = False, metavar: str | None = None, low=None, high=None,
           above=None, below=None, why: str = ""):
    """A dataclass field that is also a command-line option. ``choices`` may be a function,
    called when the parser is built (a registry that tests or plugins extend after import);
    ``factory`` computes the default (the machine's core count). Bounds: ``low``/``high``
    inclusive, ``above``/``below`` exclusive (a number bounded by neither must still be
    finite); ``why`` follows the bounds in the error."""
    metadata = {"help": help, "choices": choices, "nargs": nargs, "positional": positional,
                "metavar": metavar, "low": low, "high": high, "above": above, "below": below,
                "why": why}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter with each default shown once (see DEFAULT_SHOWN)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or DEFAULT_SHOWN in text or not action.option_strings:
            return text
        return super()._get_help_string(action)


def parser(description: str, *classes: type, only: Iterable[str] | None = None,
           presets: "Presets | None" = None) -> argparse.ArgumentParser:
    """A parser of every field of ``classes`` (of those named in ``only``, if given); with
    ``presets``, its flag chooses a named set of defaults too."""
    p = (PresetParser(presets, description=description, formatter_class=HelpFormatter)
         if presets else argparse.ArgumentParser(description=description,
                                                 formatter_class=HelpFormatter))
    for cls in classes:
        add_options(p, cls, only)
    return p


@dataclasses.dataclass(frozen=True)
class Presets:
    """Named sets of option values (``--recipe modern``): the defaults a command line starts
    from, so every flag given explicitly still wins, wherever it stands."""

    name: str  # the field-like name of the choosing option: "recipe" is --recipe
    sets: dict[str, dict]  # each preset's name -> {field name: value}; the first, the plain
    help: str


class PresetParser(argparse.ArgumentParser):
    """An ArgumentParser whose presets option, found first, sets the other options' defaults
    before the command line is parsed."""

    def __init__(self, presets: Presets, **kwargs):
        super().__init__(**kwargs)
        self.presets = presets
        self._plain = None  # the preset options' own defaults, read at the first parse
        self.add_argument(flag(presets.name), dest=presets.name, choices=tuple(presets.sets),
                          default=next(iter(presets.sets)), help=presets.help)

    def parse_known_args(self, args=None, namespace=None):
        probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        probe.add_argument(flag(self.presets.name), dest="chosen")
        try:
            chosen = probe.parse_known_args(args)[0].chosen
        except argparse.ArgumentError:  # --recipe without its value: the full parser says so
            chosen = None
        if self._plain is None:  # the options are added after the constructor
            self._plain = {name: self.get_default(name)
                           for values in self.presets.sets.values() for name in values}
        self.set_defaults(**{**self._plain, **self.presets.sets.get(chosen, {})})
        return super().parse_known_args(args, namespace)


def add_options(p: argparse.ArgumentParser, cls: type,
                only: Iterable[str] | None = None) -> None:
    hints = typing.get_type_hints(cls)
    wanted = set(only) if only is not None else None
    for field in dataclasses.fields(cls):
        if wanted is not None and field.name not in wanted:
            continue
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} is not declared with options.option()")
        p.add_argument(*_names(field), **_argument(field, hints[field.name]))


def _names(field: dataclasses.Field) -> list[str]:
    return [field.name] if field.metadata["positional"] else [flag(field.name)]


def _argument(field: dataclasses.Field, hint) -> dict:
    meta = field.metadata
    kind, many = _value_type(hint)
    default = (field.default_factory() if field.default is dataclasses.MISSING
               else field.default)
    kwargs = {"help": meta["help"], "default": default}
    if not meta["positional"]:
        kwargs["dest"] = field.name
    if kind is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    choices = meta["choices"]
    kwargs.update(type=kind, choices=choices() if callable(choices) else choices,
                  metavar=meta["metavar"])
    if many or meta["nargs"]:
        kwargs["nargs"] = meta["nargs"] or "+"
    return {k: v for k, v in kwargs.items() if v is not None or k == "default"}


def _value_type(hint) -> tuple[type, bool]:
    """(the type one value is parsed as, whether the option takes several): ``X | None`` is
    X, ``list[X]`` and ``tuple[X, ...]`` are several X."""
    hint = _strip_none(hint)
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def _strip_none(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def from_args(cls: type, args: argparse.Namespace):
    """An instance of ``cls`` from a parsed command line holding its fields (among others)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():  # nargs gives a list; a tuple field keeps a tuple
        if isinstance(value, list) and typing.get_origin(_strip_none(hints[name])) is tuple:
            values[name] = tuple(value)
    return cls(**values)


def to_argv(values: object, names: Iterable[str]) -> list[str]:
    """The command-line arguments that give the dataclass ``values`` its values of ``names``
    (None is left out: it is every such option's default)."""
    argv = []
    for name in names:
        value = getattr(values, name)
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag(name), *map(str, value)]
        else:
            argv += [flag(name), str(value)]
    return argv


def check(values: object) -> None:
    """Each field of the dataclass ``values`` of its declared type, among its choices and
    within its bounds: or a Coco4Error naming the flag, what it must be, and what it got."""
    hints = typing.get_type_hints(type(values))
    for field in dataclasses.fields(values):
        value = getattr(values, field.name)
        problem = _type_problem(value, hints[field.name])
        if problem is None and value is not None:
            problem = _choice_problem(value, field.metadata) or _bounds_problem(
                value, field.metadata)
        if problem:
            raise Coco4Error(f"{flag(field.name)} must be {problem}, got {value!r}")


def _type_problem(value, hint) -> str | None:
    """Why ``value`` cannot be of type ``hint`` (``X | None`` allows None; a float setting
    takes an int too), or None."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if any(isinstance(value, k) and not (isinstance(value, bool) and k is not bool)
           for k in kinds):
        return None
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return None
    words = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    return words.get(kinds[0], str(kinds[0]))


def _choice_problem(value, meta) -> str | None:
    choices = meta.get("choices")
    choices = choices() if callable(choices) else choices
    if choices is None or value in choices:
        return None
    return f"one of {', '.join(map(str, choices))}"


def _bounds_problem(value, meta) -> str | None:
    """What ``value`` must be and is not, by the field's bounds: the side it crosses, or the
    whole range where one of its ends is exclusive."""
    low, high, above, below = (meta.get(k) for k in ("low", "high", "above", "below"))
    if all(b is None for b in (low, high, above, below)) or isinstance(value, (str, bool)):
        return None
    # nan fails every comparison; inf passes a one-sided bound but is no setting
    too_low = not ((low is None or value >= low) and (above is None or value > above))
    too_high = not ((high is None or value <= high) and (below is None or value < below))
    why = f" {meta['why']}" if meta.get("why") else ""
    if not (too_low or too_high):
        return None if math.isfinite(value) else f"a finite number{why}"
    lower = (f"above {above}" if above is not None else "0 or more" if low == 0
             else f"at least {low}" if low is not None else None)
    upper = f"below {below}" if below is not None else f"at most {high}" if high is not None \
        else None
    if above is not None and below is not None:
        words = f"between {above} and {below} (exclusive)"
    elif lower and upper and below is not None:
        words = f"{lower} and {upper}"
    elif too_low or (lower and not upper):
        words = "a positive number" if above == 0 and upper is None else lower
    elif too_high or upper:
        words = upper
    return words + why
