"""The families of logged keys: the one list that the W&B ``define_metric`` calls, the per-family charts, the saved
workspace, the sweep report and the key table of ``docs/monitoring.md`` read.

A family is a set of keys with one meaning, e.g. ``weight_norm/<layer>``: every key that starts with its
``prefix`` (or, for a family of one key, equals ``key``; for keys the user's module names, matches ``regex``).
Each family names the monitor that logs it, its W&B run summary (``last``, ``min``, ``mean``: what the runs table
and W&B's parallel-coordinates view show), whether a multi-line chart of all its lines is logged at each epoch end
(``charts/<name>``), and the dashboard panel that shows it (:data:`PANELS`; several families may share a panel,
e.g. the angular update and its rotational-equilibrium prediction).

Nothing here imports Lightning or W&B.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BOOKKEEPING_KEYS",
    "FAMILIES",
    "Family",
    "PANELS",
    "PanelSpec",
    "SECTIONS",
    "chart_key",
    "chart_table_key",
    "families_of",
    "families_table",
    "family_of",
    "panel_families",
]

#: Sections of the saved workspace, top to bottom.
SECTIONS = ("Training", "Weight norms", "Effective decay", "Scale invariance", "Sweep")

#: Keys W&B and Lightning log for bookkeeping (no panel of their own; ``trainer/global_step`` is the x axis).
BOOKKEEPING_KEYS = frozenset({"_step", "_runtime", "_timestamp", "epoch", "trainer/global_step"})


@dataclass(frozen=True)
class Family:
    """One family of logged keys.

    ``prefix`` (keys ``<prefix><layer or group>``), ``key`` (one key) or ``regex`` (keys the user's module names)
    say which keys belong to it; ``kind`` is ``number`` (a history series), ``histogram``, ``table`` or ``image``
    (W&B media, flattened to ``<key>/_type``, ... in the history). ``summary``: the W&B summary of each key
    (``define_metric(summary=...)``), None for W&B's default (the last value). ``chart``: a multi-line chart of
    all its keys is logged as ``charts/<name>``. ``when``: which runs log it (empty: every run with the monitor).
    ``decay_metric``: the registry's ``decay_metrics`` entry that produces it (a variant-specific family).
    ``panel``: the title of its dashboard panel (default: the key pattern); families with one title share a panel.
    """

    name: str
    section: str
    logged_by: str
    meaning: str
    prefix: str = ""
    key: str = ""
    regex: str = ""
    kind: str = "number"
    summary: str | None = None
    chart: bool = False
    when: str = ""
    decay_metric: str = ""
    panel: str = ""

    @property
    def title(self) -> str:
        """The title of the dashboard panel that shows the family (families with one title share the panel)."""
        return self.panel or self.shown_as

    @property
    def pattern(self) -> str:
        """The regex of the family's keys (``re.search``; also W&B's panel ``metric_regex``)."""
        if self.regex:
            return self.regex
        if self.key:
            return "^" + re.escape(self.key) + "$"
        return "^" + re.escape(self.prefix)

    @property
    def glob(self) -> str | None:
        """The W&B ``define_metric`` name of the family (W&B accepts a trailing ``*`` only); None for regex families."""
        if self.key:
            return self.key
        return self.prefix + "*" if self.prefix else None

    @property
    def shown_as(self) -> str:
        """The key pattern as the docs write it."""
        if self.key:
            return self.key
        if self.prefix in _GROUP_FAMILIES:
            return self.prefix + "<group>"
        if self.prefix in _GROUP_AND_LAYER_FAMILIES:
            return self.prefix + "<group or layer>"
        if self.prefix:
            return self.prefix + "<layer>"
        return self.regex

    def matches(self, key: str) -> bool:
        """``key`` belongs to this family (a media key also by its flattened ``<key>/<field>`` history keys)."""
        if self.kind != "number" and self.key:
            return key == self.key or key.startswith(self.key + "/")
        return re.search(self.pattern, key) is not None


#: Prefixes whose ``<name>`` part is a param group, not a layer.
_GROUP_FAMILIES = {"lr/", "eta/", "decay_factor/", "decay_timescale_steps/", "decay_timescale_epochs/"}
_GROUP_FAMILIES |= {"preconditioned_decay/"}
#: ... and those with both: group keys and layer keys.
_GROUP_AND_LAYER_FAMILIES = {"decayed_fraction/"}

_W = "WeightNormMonitor"
_E = "EffectiveDecayMonitor"
_S = "ScaleInvarianceMonitor"
_INVARIANT = "layers labeled scale-invariant"
_ANGLE = "angular update vs rotational-equilibrium prediction"

#: Every family of keys this package's monitors (and the quickstart's module and LearningRateMonitor) log.
FAMILIES: tuple[Family, ...] = (
    # -- training: the LightningModule's own self.log keys and LearningRateMonitor ------------------------------
    Family("loss", "Training", "the LightningModule", "training / validation / test loss",
           regex=r"^(train|val|test)/loss$", panel="loss"),
    Family("accuracy", "Training", "the LightningModule", "training / validation / test accuracy",
           regex=r"^(train|val|test)/acc$", panel="accuracy"),
    Family("lr_monitor", "Training", "LearningRateMonitor", "the lr of each param group, as the scheduler set it",
           regex=r"^lr-", panel="learning rate (LearningRateMonitor)"),
    Family("diagnostics", "Training", "TrainingReport", "the diagnostics.png picture (end of fit)",
           key="diagnostics", kind="image", panel="diagnostics.png (TrainingReport)"),
    # -- weight norms ------------------------------------------------------------------------------------------
    Family("weight_norm_total", "Weight norms", _W, "sqrt(sum of |w|^2) over all trainable parameters",
           key="weight_norm/total", summary="last", panel="total weight norm"),
    Family("weight_norm", "Weight norms", _W, "|w| per layer (the total is one of its lines)",
           prefix="weight_norm/", summary="last", chart=True, panel="weight norm per layer"),
    Family("weight_norm_module", "Weight norms", _W, "|w| per module", prefix="weight_norm_module/",
           summary="last", chart=True, when="per_module=True"),
    Family("neuron_norm_min", "Weight norms", _W, "smallest row norm |w[j, ...]| per layer",
           prefix="neuron_norm_min/", summary="last"),
    Family("neuron_norm_mean", "Weight norms", _W, "mean row norm per layer", prefix="neuron_norm_mean/",
           summary="last", chart=True),
    Family("neuron_norm_max", "Weight norms", _W, "largest row norm per layer", prefix="neuron_norm_max/",
           summary="last"),
    Family("weight_norm_histogram", "Weight norms", _W, "histogram of the per-layer norms, every logging step",
           key="histograms/weight_norm", kind="histogram"),
    Family("weight_norm_table", "Weight norms", _W, "latest norms per layer (epoch end)", key="tables/weight_norm",
           kind="table"),
    Family("weight_norm_bars", "Weight norms", _W, "bar chart of the latest norms (epoch end)",
           key="plots/weight_norm", kind="image"),
    # -- effective decay ---------------------------------------------------------------------------------------
    Family("lr_group", "Effective decay", _E, "lr_t the step used, per param group", prefix="lr/", summary="last"),
    Family("eta", "Effective decay", _E, "eta_t = lr_t / alpha per param group", prefix="eta/", summary="last"),
    Family("decay_factor", "Effective decay", _E, "the factor the step multiplied the weights by (1: no decay)",
           prefix="decay_factor/", summary="min", chart=True),
    Family("decay_timescale_steps", "Effective decay", _E, "1 / (1 - factor): the decay's e-folding time in steps",
           prefix="decay_timescale_steps/", summary="last"),
    Family("decay_timescale_epochs", "Effective decay", _E, "the same timescale in epochs",
           prefix="decay_timescale_epochs/", summary="last"),
    Family("decay_factor_min", "Effective decay", _E, "AdamP: smallest elementwise factor 1 / (1 + lr_t wd / D)",
           prefix="decay_factor_min/", summary="min", decay_metric="elementwise_factor"),
    Family("decay_factor_mean", "Effective decay", _E, "AdamP: mean elementwise factor per layer",
           prefix="decay_factor_mean/", summary="min", chart=True, decay_metric="elementwise_factor"),
    Family("decay_factor_max", "Effective decay", _E, "AdamP: largest elementwise factor per layer",
           prefix="decay_factor_max/", summary="min", decay_metric="elementwise_factor"),
    Family("decayed_fraction", "Effective decay", _E, "cautious decay: share of coordinates the mask decays",
           prefix="decayed_fraction/", summary="mean", chart=True, decay_metric="decayed_fraction"),
    Family("preconditioned_decay", "Effective decay", _E, "Adam-L2: lr_t wd / D, group mean",
           prefix="preconditioned_decay/", summary="mean", chart=True, decay_metric="preconditioned_decay"),
    Family("preconditioned_decay_min", "Effective decay", _E, "Adam-L2: smallest lr_t wd / D per layer",
           prefix="preconditioned_decay_min/", summary="mean", decay_metric="preconditioned_decay"),
    Family("preconditioned_decay_mean", "Effective decay", _E, "Adam-L2: mean lr_t wd / D per layer",
           prefix="preconditioned_decay_mean/", summary="mean", decay_metric="preconditioned_decay"),
    Family("preconditioned_decay_max", "Effective decay", _E, "Adam-L2: largest lr_t wd / D per layer",
           prefix="preconditioned_decay_max/", summary="mean", decay_metric="preconditioned_decay"),
    Family("l2_grad_ratio", "Effective decay", _E, "L2 rules: wd |w| / |g| per layer", prefix="l2_grad_ratio/",
           summary="mean", chart=True, decay_metric="l2_grad_ratio"),
    Family("effective_decay_table", "Effective decay", _E, "latest values per group / layer (epoch end)",
           key="tables/effective_decay", kind="table"),
    # -- scale invariance --------------------------------------------------------------------------------------
    Family("cos", "Scale invariance", _S, "cos(w, g) before the step (0 for a scale-invariant loss)",
           prefix="scale_invariance/cos/", summary="mean", chart=True),
    Family("relative_update", "Scale invariance", _S, "|w_{t+1} - w_t| / |w_t|",
           prefix="scale_invariance/relative_update/", summary="mean"),
    Family("angular_update", "Scale invariance", _S, "angle between w_t and w_{t+1} (rad)",
           prefix="scale_invariance/angular_update/", summary="mean", chart=True, panel=_ANGLE),
    Family("angular_update_equilibrium", "Scale invariance", _S, "the rotational-equilibrium prediction of the angle",
           prefix="scale_invariance/angular_update_equilibrium/", summary="mean", chart=True, when=_INVARIANT,
           panel=_ANGLE),
    Family("weight_norm_equilibrium", "Scale invariance", _S, "the equilibrium norm |w|*",
           prefix="scale_invariance/weight_norm_equilibrium/", summary="last", when=_INVARIANT),
    Family("effective_lr", "Scale invariance", _S, "lr' / |w| (Adam) or lr / |w|^2 (SGD)",
           prefix="scale_invariance/effective_lr/", summary="mean", when=_INVARIANT),
    Family("invariant", "Scale invariance", _S, "1 if the numerical check found the loss scale-invariant in the layer",
           prefix="scale_invariance/invariant/", summary="last"),
    Family("loss_change", "Scale invariance", _S, "|L(c w) - L(w)| / |L(w)| of the numerical check",
           prefix="scale_invariance/loss_change/", summary="last"),
    Family("scale_invariance_table", "Scale invariance", _S, "latest values per layer (epoch end)",
           key="tables/scale_invariance", kind="table"),
    Family("scale_invariance_bars", "Scale invariance", _S, "bar chart: angular update next to its prediction",
           key="plots/scale_invariance", kind="image"),
    # -- sweeps: the cells' runs (group = the sweep's name) and the sweep's summary run ---------------------------
    Family("sweep_weight_norm", "Sweep", "lightning-decay sweep (each cell)", "total weight norm at each epoch end",
           key="sweep/weight_norm", when="sweep cells"),
)

_BY_NAME = {family.name: family for family in FAMILIES}


def chart_key(family: Family) -> str:
    """The W&B key of a family's multi-line chart (``charts/<name>``)."""
    return f"charts/{family.name}"


def chart_table_key(family: Family) -> str:
    """The history key W&B stores a family's chart under (its table: ``charts/<name>_table``)."""
    return f"charts/{family.name}_table"


def family_of(key: str) -> Family | None:
    """The family a logged key belongs to: a one-key family first, then the longest matching prefix, then a
    regex family; None for a key of no family (bookkeeping keys, the user's own)."""
    exact = [f for f in FAMILIES if f.key and f.matches(key)]
    if exact:
        return exact[0]
    prefixed = [f for f in FAMILIES if f.prefix and key.startswith(f.prefix)]
    if prefixed:
        return max(prefixed, key=lambda f: len(f.prefix))
    return next((f for f in FAMILIES if f.regex and f.matches(key)), None)


def families_of(keys: Iterable[str]) -> set[str]:
    """The names of the families the keys belong to (keys of no family ignored)."""
    return {family.name for family in map(family_of, keys) if family is not None}


@dataclass(frozen=True)
class PanelSpec:
    """One dashboard panel: its title and the families it draws (several: on one chart); ``kind`` follows the
    first family's (``number``: a line plot of every key the families' patterns match)."""

    title: str
    families: tuple[str, ...]

    @property
    def section(self) -> str:
        return _BY_NAME[self.families[0]].section

    @property
    def kind(self) -> str:
        return _BY_NAME[self.families[0]].kind


def panel_families(panel: PanelSpec) -> list[Family]:
    """The :class:`Family` records a panel draws."""
    return [_BY_NAME[name] for name in panel.families]


def _default_panels() -> tuple[PanelSpec, ...]:
    """One panel per distinct ``Family.title``, in the order of :data:`FAMILIES`."""
    order: dict[str, list[str]] = {}
    for family in FAMILIES:
        order.setdefault(family.title, []).append(family.name)
    return tuple(PanelSpec(title, tuple(names)) for title, names in order.items())


#: The panels of the saved workspace (sections from their first family), in order; every family is on one.
PANELS: tuple[PanelSpec, ...] = _default_panels()


def families_table() -> str:
    """The Markdown table of ``docs/monitoring.md`` ("which panel shows which key"): per family, its section and
    panel, its keys, the monitor, the W&B summary, its chart and when it is logged."""
    lines = [
        "| section | panel | keys | logged by | W&B summary | chart | logged when |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        chart = f"`{chart_key(family)}`" if family.chart else ""
        when = family.when or (f"variants with `{family.decay_metric}`" if family.decay_metric else "")
        keys = f"`{family.shown_as}`".replace("|", "\\|")
        lines.append(
            f"| {family.section} | {family.title.replace('|', '/')} | {keys} | {family.logged_by} |"
            f" {family.summary or ''} | {chart} | {when} |"
        )
    return "\n".join(lines) + "\n"
