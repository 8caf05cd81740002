"""The LightningCLI of ``lightning-decay`` (fit / validate / test / predict); :mod:`lightning_decay.command` adds
``sweep``.

    lightning-decay fit --config configs/quickstart.yaml
    lightning-decay fit --config configs/quickstart.yaml --config configs/adamp.yaml
    lightning-decay fit --config configs/quickstart.yaml --print_config
    lightning-decay sweep --config configs/blog/adamw-vs-adamp.yaml

Models and data modules are chosen by ``class_path`` (any LightningModule / LightningDataModule, e.g. a user's
model with :class:`~lightning_decay.integration.mixin.DecayMixin`). Settings that are invalid (negative lr, unknown
variant, missing data folder, ...) stop the command before training with a short error that names the key: the
model's ``decay`` block is checked right after parsing (a misspelt variant lists the valid names), everything else
when the classes are built. LightningCLI's top-level ``optimizer:`` / ``lr_scheduler:`` keys on a ``DecayMixin``
model are an error too, unless the model's ``decay.allow_external_optimizer`` is true: they would replace the
mixin's optimizer and its parameter groups.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import IO, Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightning_decay.integration.construction import resolve_optimizer
from lightning_decay.integration.mixin import DecayMixin
from lightning_decay.integration.settings import DecaySettings
from lightning_decay.optim.registry import variant_names

__all__ = ["DecayArgumentParser", "DecayCLI", "run_cli", "check_decay_block"]


class DecayArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with parse errors of a few lines: a one-line usage (``--help`` still lists every key)
    and jsonargparse's nested "does not validate against any of the Union subtypes" reports cut to their reasons."""

    def print_usage(self, file: IO[str] | None = None) -> None:
        prog = self.prog.replace(" [options]", "")
        (file or sys.stdout).write(f"usage: {prog} [-h] [-c CONFIG] [--print_config] [--KEY VALUE ...]\n")

    def error(self, message: str, ex: Exception | None = None) -> Any:  # NoReturn when exiting on errors
        return super().error(shorten_error(message), ex)


def shorten_error(message: str) -> str:
    """jsonargparse's report of a failed subclass / union value, without the subtype list, the ``Expected a
    <class 'NoneType'>`` alternative and the dump of the whole given value: only the reasons."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    head = message.split("Does not validate against any of the Union subtypes")[0]
    reasons: list[str] = []
    in_errors = False
    for line in message.splitlines():
        stripped = line.strip()
        if stripped.startswith("Errors:"):
            in_errors = True
            continue
        if stripped.startswith(("Given value", "Subtypes:")) or "Does not validate against" in stripped:
            in_errors = False if stripped.startswith("Given value") else in_errors
            continue
        if not in_errors or re.fullmatch(r"- Expected a <class 'NoneType'>", stripped):
            continue
        if stripped.startswith("- "):
            reasons.append(stripped[2:])
        elif reasons and stripped:
            reasons[-1] += " " + stripped
    return head + ("; ".join(reasons) if reasons else message[len(head):])


def _plain(value: Any, settings: bool = False) -> Any:
    """A parsed value as plain data: Namespaces to dicts, also inside tuples and lists (where ``as_dict`` stops);
    with ``settings``, a dataclass given as ``{class_path, init_args}`` (a ``GroupOverride``) as its arguments."""
    if isinstance(value, Namespace):
        value = {key: item for key, item in vars(value).items() if not key.startswith("__")}  # no __path__
    if isinstance(value, Mapping):
        if settings and "class_path" in value and set(value) <= {"class_path", "init_args", "dict_kwargs"}:
            return _plain(value.get("init_args") or {}, settings)
        return {key: _plain(item, settings) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, settings) for item in value]
    return value


def _decay_blocks(section: Any, key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(key, settings)`` of every ``decay`` block under a model's config (``model.init_args.decay``, ...)."""
    section = _plain(section)
    if not isinstance(section, Mapping):
        return
    for name, value in section.items():
        if name == "decay" and isinstance(value, Mapping) and "optimizer" in value:
            yield f"{key}.{name}", _plain(value, settings=True)
        elif name == "init_args" or (isinstance(value, Mapping) and "init_args" in value):
            yield from _decay_blocks(value, f"{key}.{name}")


def check_decay_block(key: str, values: Mapping[str, Any]) -> str | None:
    """The error for a ``decay`` block at ``key`` (its settings as parsed), naming the offending key, or None.

    An unknown variant lists the registry's names (and the closest one); other errors come from
    :class:`~lightning_decay.integration.settings.DecaySettings`' own checks."""
    optimizer = values.get("optimizer")
    if isinstance(optimizer, str) and "." not in optimizer:
        try:
            resolve_optimizer(optimizer)
        except (TypeError, ValueError):
            names = variant_names()
            close = difflib.get_close_matches(optimizer.strip().lower(), names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return (
                f"{key}.optimizer: unknown variant {optimizer!r}{hint}; valid variants: {', '.join(names)}; "
                "or a dotted torch.optim.Optimizer class path"
            )
    try:
        DecaySettings.coerce(values)
    except (TypeError, ValueError) as error:
        text = str(error).removeprefix("DecaySettings: ")
        aliases = {name: (name,) for name in values} | {"groups": ("groups", "ParamGroupSettings", "GroupOverride")}
        mentioned = [
            (found.start(), name)
            for name, words in aliases.items()
            for word in words
            if (found := re.search(rf"\b{re.escape(word)}\b", text))
        ]
        return f"{key}.{min(mentioned)[1]}: {text}" if mentioned else f"{key}: {text}"
    return None


class DecayCLI(LightningCLI):
    """LightningCLI whose configuration errors are short parser errors naming the key: the model's ``decay``
    block is checked at parse time, instantiation errors name their reason, and LightningCLI's top-level
    ``optimizer:`` key on a ``DecayMixin`` model stops the command (unless ``decay.allow_external_optimizer``)."""

    def __init__(self, *args: Any, parser_class: type[LightningArgumentParser] = DecayArgumentParser, **kwargs: Any):
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def _subcommand_parser(self) -> LightningArgumentParser:
        subcommand = self.config.get("subcommand") if isinstance(self.config, Namespace) else None
        return self._parser(subcommand) if subcommand else self.parser

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """LightningCLI's parsing, then the model's ``decay`` block(s) checked (a parser error naming the key)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        section = self.config.get(subcommand) if subcommand else self.config
        model = section.get("model") if isinstance(section, Namespace) else None
        for key, values in _decay_blocks(model, "model"):
            message = check_decay_block(key, values)
            if message is not None:
                self._subcommand_parser().error(message)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            self._subcommand_parser().error(f"invalid configuration: {error}")
        model = self.model
        if isinstance(model, DecayMixin) and "configure_optimizers" in vars(model):
            try:  # LightningCLI's top-level optimizer: key replaced the mixin's configure_optimizers
                model.check_optimizer_source(_cli_optimizers(model))
            except ValueError as error:
                self._subcommand_parser().error(str(error))


def _cli_optimizers(model: LightningModule) -> list[Any]:
    """The optimizer LightningCLI built for its top-level ``optimizer:`` key (held by the replacing method)."""
    method = vars(model).get("configure_optimizers")
    keywords = getattr(getattr(method, "__func__", None), "keywords", None) or {}
    optimizer = keywords.get("optimizer")
    return [optimizer] if optimizer is not None else []


def run_cli(args: ArgsType = None) -> DecayCLI:
    """Run a LightningCLI subcommand (fit / validate / test / predict) and return the CLI (trainer, model, ...)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    return DecayCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
