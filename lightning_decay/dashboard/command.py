"""``lightning-decay dashboard``: create the W&B workspace view of a project, or a W&B report of a finished sweep.

    lightning-decay dashboard --entity E --project P [--keys-from RUN] [--sweep-group G] [--dry-run view.json]
    lightning-decay dashboard --report SWEEP_DIR [--entity E] [--project P] [--dry-run report.json]

``--dry-run FILE`` writes the full specification and touches no network; without the ``[dashboard]`` extra
(``wandb-workspaces``) it writes the view's outline instead (sections, panels, the keys each reads), and only
creating the view asks for the extra. Without W&B credentials (no
``WANDB_API_KEY``, no netrc entry for the W&B host) the command says what it would create and how to create it
once logged in: never a login prompt, never a network call.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_decay.dashboard.spec import (
    INSTALL,
    OUTLINE_FORMAT,
    DashboardDependencyError,
    panel_references,
    stable_spec,
    write_spec,
)

__all__ = ["credentials_source", "logged_keys", "main"]


def credentials_source() -> str | None:
    """Where W&B credentials would come from (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, ``netrc``), or
    None; reads the environment and the netrc file with wandb's own reader, asks no server and never prompts."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return variable
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
    except ImportError:  # another wandb version: the package's own netrc check
        from lightning_decay.integration.wandb_logger import wandb_logged_in

        return "netrc" if wandb_logged_in() else None
    try:
        return "netrc" if read_netrc_auth(host=host) else None
    except Exception:  # an unreadable or malformed netrc: no usable credentials
        return None


def logged_keys(path: str | Path) -> list[str]:
    """The keys a run logged: from an offline W&B run (a ``run-*.wandb`` file, or the newest one under a folder) or
    from a CSVLogger's ``metrics.csv`` (the file, or the newest under a folder); ``ValueError`` naming the path."""
    from lightning_decay.diagnostics.metrics_csv import read_metrics_csv
    from lightning_decay.diagnostics.wandb_files import find_run_file, read_history

    path = Path(path)
    if path.is_dir():
        runs = sorted(path.rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
        tables = sorted(path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
        if not (runs or tables):
            raise ValueError(f"--keys-from {str(path)!r}: no run-*.wandb or metrics.csv under this folder")
        path = find_run_file(path) if runs else tables[-1]
    if path.suffix == ".wandb":
        return sorted({key for row in read_history(path) for key in row})
    if path.suffix == ".csv":
        return sorted(read_metrics_csv(path))
    raise ValueError(f"--keys-from {str(path)!r}: expected a run-*.wandb file, a metrics.csv or a folder with one")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-decay dashboard",
        description="Create a W&B workspace view that shows what weight decay does (or, with --report, a W&B report "
        "of a finished lightning-decay sweep). --dry-run writes the specification without any network access.",
    )
    parser.add_argument("--entity", help="W&B entity (user or team); required for a workspace")
    parser.add_argument("--project", help="W&B project (a report defaults to the sweep's project: its name)")
    parser.add_argument("--name", help="the workspace view's name (default: 'lightning-decay: what weight decay does')")
    parser.add_argument("--keys-from", metavar="RUN", help="only panels for the key families this run logged "
                        "(an offline run's run-*.wandb, a metrics.csv, or a folder holding one)")
    parser.add_argument("--sweep-group", metavar="G", help="show only the runs of this sweep (W&B group)")
    parser.add_argument("--report", metavar="SWEEP_DIR", help="build a report of this finished sweep instead")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--dry-run", metavar="FILE", help="write the full specification as JSON; no network")
    return parser


def describe(spec: dict[str, Any], kind: str) -> list[str]:
    """What a specification (or a dry run's outline) holds, in a few lines: sections (or report blocks) and
    panels."""
    if spec.get("format") == OUTLINE_FORMAT:
        return _describe_outline(spec["view"], kind)
    references = panel_references(spec)
    by_section = Counter(reference.section for reference in references)
    if kind == "workspace":
        sections = [s["name"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]]
        where = f"{spec['entity']}/{spec['project']}"
        head = f"workspace view {spec['displayName']!r} for {where}: {len(sections)} sections, {len(references)} panels"
        return [head, *(f"  {name}: {by_section[name]} panels" for name in sections)]
    blocks = spec["spec"]["blocks"]
    headings = [b for b in blocks if b.get("type") == "heading"]
    where = f"{spec['project']['entityName']}/{spec['project']['name']}"
    return [
        f"report {spec['displayName']!r} in {where}: {len(blocks)} blocks, {len(headings)} headings,"
        f" {len(references)} panels"
    ]


def _describe_outline(view: dict[str, Any], kind: str) -> list[str]:
    """:func:`describe` of an outline (a view built without ``wandb-workspaces``)."""
    if kind == "workspace":
        sections = view["sections"]
        count = sum(len(section["panels"]) for section in sections)
        where = f"{view['entity']}/{view['project']}"
        head = f"workspace view {view['name']!r} for {where}: {len(sections)} sections, {count} panels"
        return [head, *(f"  {s['name']}: {len(s['panels'])} panels" for s in sections)]
    blocks = view["blocks"]
    headings = [b for b in blocks if b["type"] in {"H1", "H2", "H3"}]
    count = sum(len(b.get("panels", [])) for b in blocks if b["type"] == "PanelGrid")
    return [
        f"report {view['title']!r} in {view['entity']}/{view['project']}: {len(blocks)} blocks, {len(headings)}"
        f" headings, {count} panels"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``lightning-decay dashboard ...`` (see the module docstring); returns the exit code: 0 created or written,
    1 not logged in (nothing created) or the save failed, 2 a usage error."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.report:
            from lightning_decay.dashboard.report import build_report

            kind = "report"
            view = build_report(args.report, entity=args.entity, project=args.project, title=args.title,
                                plain=bool(args.dry_run))
        else:
            from lightning_decay.dashboard.workspace import DEFAULT_NAME, build_workspace

            missing = [f"--{name}" for name in ("entity", "project") if not getattr(args, name)]
            if missing:
                parser.error(f"{' and '.join(missing)} required for a workspace (or pass --report SWEEP_DIR)")
            kind = "workspace"
            keys = logged_keys(args.keys_from) if args.keys_from else None
            view = build_workspace(
                args.entity, args.project, name=args.name or DEFAULT_NAME, keys=keys, sweep_group=args.sweep_group,
                plain=bool(args.dry_run),
            )
        spec = stable_spec(view)
    except (DashboardDependencyError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = describe(spec, kind)
    if kind == "workspace" and not args.keys_from:
        lines.append("  (per-layer panels draw every layer a run logged; --keys-from RUN splits them into charts of"
                     " at most 10 lines)")
    if args.dry_run:
        path = write_spec(spec, args.dry_run)
        if spec.get("format") == OUTLINE_FORMAT:
            lines += [
                f"wandb-workspaces is not installed (the [dashboard] extra): {path} holds the {kind}'s outline"
                " (sections, panels, the keys each reads), not W&B's full specification.",
                f"For the full specification, and to create the {kind}: {INSTALL}",
            ]
        print("\n".join([*lines, f"outline written to {path} (dry run: nothing sent to W&B)"
                          if spec.get("format") == OUTLINE_FORMAT
                          else f"specification written to {path} (dry run: nothing sent to W&B)"]))
        return 0
    source = credentials_source()
    offline = os.environ.get("WANDB_MODE", "").lower() in {"offline", "disabled", "dryrun"}
    if source is None or offline:
        why = (
            f"W&B is offline (WANDB_MODE={os.environ.get('WANDB_MODE')})" if source is not None
            else "not logged in to W&B (no WANDB_API_KEY, no netrc entry for the W&B host)"
        )
        command = "lightning-decay dashboard " + " ".join(sys.argv[2:] if argv is None else argv)
        print("\n".join([
            f"{why}: nothing created. It would create the {kind}:", *lines,
            "To create it: run `wandb login` (or set WANDB_API_KEY), unset WANDB_MODE=offline if set, then run again:",
            f"  {command}",
            "To see its full specification now, without W&B: add --dry-run FILE.json",
        ]))
        return 1
    try:
        saved = view.save()
    except Exception as error:  # network, permissions, an unknown entity: say so, never a traceback wall
        print(f"error: could not save the {kind} to W&B ({type(error).__name__}: {error})", file=sys.stderr)
        return 1
    url = getattr(saved, "url", "")
    print("\n".join([*lines, f"saved ({source} credentials): {url}"]))
    return 0
