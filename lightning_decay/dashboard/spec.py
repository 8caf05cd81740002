"""What the workspace and the report share: the lazy import of ``wandb-workspaces`` (the ``[dashboard]`` extra),
the view's full specification as JSON with stable ids (the dry run), the keys each panel of a specification
reads, and the check for W&B credentials that decides between saving and saying what would be saved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OUTLINE_FORMAT",
    "DashboardDependencyError",
    "PanelReference",
    "PlainObject",
    "load_workspaces",
    "panel_references",
    "stable_spec",
    "write_spec",
]

#: How to install what the dashboard needs.
INSTALL = "pip install 'lightning-decay[dashboard]'  (the wandb-workspaces package)"


class DashboardDependencyError(ImportError):
    """``wandb-workspaces`` is missing: the ``[dashboard]`` extra is not installed."""


#: The ``format`` of the JSON a dry run writes without ``wandb-workspaces``.
OUTLINE_FORMAT = "lightning-decay dashboard outline (wandb-workspaces not installed)"


class PlainObject:
    """A stand-in for a ``wandb_workspaces`` object (a panel, a section, the view): its class name and the
    arguments it was built with, readable as attributes (``grid.runsets``); :meth:`outline` gives them as JSON."""

    def __init__(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.__dict__.update(_kind=kind, _args=args, _kwargs=kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None

    def outline(self) -> dict[str, Any]:
        """``{"type": <class name>, "args": [...], <argument>: <value>, ...}``, nested objects likewise."""
        out: dict[str, Any] = {"type": self._kind}
        if self._args:
            out["args"] = _outline(list(self._args))
        out.update({key: _outline(value) for key, value in self._kwargs.items() if value is not None})
        return out


def _outline(value: Any) -> Any:
    if isinstance(value, PlainObject):
        return value.outline()
    if isinstance(value, (list, tuple)):
        return [_outline(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _outline(item) for key, item in value.items()}
    return value


class _PlainModule:
    """Stands in for ``wandb_workspaces.workspaces`` / ``.reports.v2``: every class a :class:`PlainObject`."""

    def __getattr__(self, kind: str) -> Any:
        if kind.startswith("__"):
            raise AttributeError(kind)
        return lambda *args, **kwargs: PlainObject(kind, args, kwargs)


def load_workspaces(plain: bool = False) -> tuple[Any, Any]:
    """``(wandb_workspaces.workspaces, wandb_workspaces.reports.v2)``, imported now (they pull in pydantic models).
    When the package is missing: with ``plain``, stand-ins that record what would be built (:class:`PlainObject`:
    the dry run's outline); otherwise :class:`DashboardDependencyError` naming the ``[dashboard]`` extra."""
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
    except ImportError as error:
        if plain:
            return _PlainModule(), _PlainModule()
        raise DashboardDependencyError(
            f"lightning-decay dashboard needs the optional extra [dashboard]: {INSTALL}; import failed: {error}"
        ) from error
    return workspaces, reports


def stable_spec(view: Any) -> dict[str, Any]:
    """The full specification of a ``Workspace`` or ``Report`` (its pydantic model dumped by alias, as the W&B app
    stores it), with the random panel and run-set ids replaced by ``ld-<n>`` in order of appearance, so that the
    same view always gives the same JSON. Builds it offline: no network, no credentials. A view built without
    ``wandb-workspaces`` (:class:`PlainObject`) gives its outline instead: ``{"format": OUTLINE_FORMAT, "install":
    ..., "view": ...}`` (the classes and arguments it was built from)."""
    if isinstance(view, PlainObject):
        return {"format": OUTLINE_FORMAT, "install": INSTALL, "view": view.outline()}
    spec = view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    counter = iter(range(1_000_000))
    renamed: dict[str, str] = {}

    def walk(node: Any, parent: str = "") -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in {"__id__", "id"} and isinstance(value, str) and value and parent != "project":
                    value = renamed.setdefault(value, f"ld-{next(counter)}")
                out[key] = walk(value, key)
            return out
        if isinstance(node, list):
            return [walk(item, parent) for item in node]
        return node

    return walk(spec)


def write_spec(spec: dict[str, Any], path: str | Path) -> Path:
    """Write a specification as indented JSON (sorted keys: a stable file to commit and diff)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class PanelReference:
    """What one panel of a specification reads: ``history`` keys (exact names), ``regexes`` over history keys,
    ``media`` keys (images, tables, charts: a history key or its ``<key>/...`` fields), ``config`` keys and
    ``summary`` keys."""

    section: str
    title: str
    view_type: str
    history: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    media: tuple[str, ...] = ()
    config: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()


def _accessor(value: str, config: list[str], summary: list[str], history: list[str]) -> None:
    """Sort a panel accessor (``config:lr.value``, ``summary:sweep/accuracy``, a plain history key)."""
    if value.startswith("config:"):
        name, _, rest = value[len("config:"):].partition(".value")
        config.append(name + rest)
    elif value.startswith("summary:"):
        summary.append(value[len("summary:"):])
    elif value.startswith("run:"):
        return
    elif value and value not in {"_step", "Step"}:
        history.append(value)


def _panel_reference(section: str, panel: dict[str, Any]) -> PanelReference:
    view_type = panel.get("viewType", "")
    config = panel.get("config", {})
    history: list[str] = []
    regexes: list[str] = []
    media: list[str] = []
    configs: list[str] = []
    summaries: list[str] = []
    title = config.get("chartTitle") or ""
    if view_type == "Run History Line Plot":
        history.extend(config.get("metrics", []))
        if config.get("useMetricRegex") and config.get("metricRegex"):
            regexes.append(config["metricRegex"])
    elif view_type == "Media Browser":
        media.extend(config.get("mediaKeys", []))
    elif view_type == "Parallel Coordinates Plot":
        for column in config.get("columns", []):
            _accessor(column.get("accessor", ""), configs, summaries, history)
    elif view_type == "Scatter Plot":
        for axis in ("xAxis", "yAxis", "zAxis"):
            if config.get(axis):
                _accessor(config[axis], configs, summaries, history)
    elif view_type == "Vega2":
        table = config.get("userQuery", {}).get("queryFields", [])
        media.extend(_table_keys(table))
        title = title or config.get("panelDefId", "")
        strings = config.get("stringSettings", {}) or {}
        title = strings.get("title", title)
    elif view_type == "Weave":
        media.extend(_weave_keys(config))
        title = title or (media[0] if media else "")
    return PanelReference(
        section, title, view_type, tuple(history), tuple(regexes), tuple(media), tuple(configs), tuple(summaries)
    )


def _table_keys(node: Any) -> Iterator[str]:
    """The ``tableKey`` arguments in a custom chart's query."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "args" and isinstance(value, list):
                for argument in value:
                    if isinstance(argument, dict) and argument.get("name") == "tableKey":
                        yield str(argument.get("value"))
            else:
                yield from _table_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _table_keys(item)


def _weave_keys(node: Any) -> Iterator[str]:
    """The summary keys a Weave summary-table panel reads (``runs.summary['<key>']``: the ``pick`` op's key)."""
    if isinstance(node, dict):
        if node.get("name") == "pick" and isinstance(node.get("inputs"), dict):
            key = node["inputs"].get("key", {})
            if isinstance(key, dict) and isinstance(key.get("val"), str):
                yield key["val"]
        for value in node.values():
            yield from _weave_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _weave_keys(item)


def panel_references(spec: dict[str, Any]) -> list[PanelReference]:
    """Every panel of a workspace or report specification (:func:`stable_spec`) with the keys it reads, read from
    the specification itself (not from the code that built it)."""
    references = []
    section_root = spec.get("spec", {}).get("section", {}).get("panelBankConfig", {})
    for section in section_root.get("sections", []):
        for panel in section.get("panels", []):
            references.append(_panel_reference(section.get("name", ""), panel))
    for block in spec.get("spec", {}).get("blocks", []):
        if block.get("type") != "panel-grid":
            continue
        panels = block.get("metadata", {}).get("panelBankSectionConfig", {}).get("panels", [])
        for panel in panels:
            references.append(_panel_reference("report", panel))
    return references
