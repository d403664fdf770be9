"""``ddnn check``: every artefact of a run directory against what it records it was made from.

Each stage's artefact is ``ok``, ``missing``, ``damaged`` (unreadable) or ``stale`` (made from
inputs that have changed since), with the command that rebuilds it. Nothing is written.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ddnn_jax.common.errors import UsageError
from ddnn_jax.core.router_net import DEPTH_PRESETS, RouterConfig
from ddnn_jax.core.variants import cotrain
from ddnn_jax.jobs.run import RunPlan, planned_families
from ddnn_jax.rundir import (
    FamilyDir,
    RunDir,
    StudyDir,
    as_run,
    checkpoints,
    family_fingerprint,
    locked,
    outputs_fingerprint,
    read_family,
    read_family_scores,
    read_json,
    read_metrics,
    read_outputs,
    read_results,
    read_run_record,
    same_checkpoint,
)
from ddnn_jax.rundir.bottlenecks import read_bottleneck, read_bottleneck_logits, read_coded_bytes
from ddnn_jax.rundir.files import leftovers, remove
from ddnn_jax.rundir.layout import BOTTLENECKS, EDGE

OK, MISSING, DAMAGED, STALE, LEFTOVER = "ok", "missing", "damaged", "stale", "leftover"


@dataclasses.dataclass(frozen=True)
class Finding:
    artefact: str  # its path inside the run directory
    status: str  # OK, MISSING, DAMAGED or STALE
    detail: str = ""
    repair: str = ""  # the command that rebuilds it

    def line(self) -> str:
        text = f"{self.status:8s} {self.artefact}"
        if self.detail:
            text += f": {self.detail}"
        return text + (f"  -> {self.repair}" if self.repair else "")


def route_command(run: RunDir, name: str, config: RouterConfig) -> str:
    """The ``ddnn route`` command that trains ``config`` as family ``name`` again."""
    depth = next((d for d, widths in DEPTH_PRESETS.items() if tuple(widths) == tuple(config.hidden)), None)
    flags = [
        f"--inputs {config.inputs}",
        f"--objective {config.objective}",
        *([f"--loss {config.loss}"] if config.loss is not None else []),
        *([f"--focal-gamma {config.focal_gamma:g}"] if config.loss == "focal" else []),
        f"--labels {config.labels}",
        *([f"--fit-split {config.fit_split}"] if config.fit_split != "train" else []),
        "--grid " + ",".join(f"{t:g}" for t in config.targets),
        *([f"--depth {depth}"] if depth is not None else []),
        f"--dropout {config.dropout_rate:g}",
        f"--max-epochs {config.max_epochs}",
        f"--router-seed {config.seed}",
        f"--name {name}",
    ]
    return f"ddnn route --run {run} " + " ".join(flags)


def _planned(run: RunDir) -> dict[str, RouterConfig]:
    """The router families ``ddnn run`` planned for this run, if it was made by ``ddnn run``."""
    if not run.run_plan.is_file():
        return {}
    try:
        value = read_json(run.run_plan, "")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return planned_families(RunPlan(**fields))
    except Exception:  # a damaged plan only costs the exact repair commands
        return {}


def _recorded_config(run: RunDir, family: FamilyDir) -> RouterConfig:
    """The family's configuration from its own record or, if that is damaged, from results.json."""
    try:
        return RouterConfig.from_json(read_family(family).config)
    except (UsageError, TypeError):
        results = read_results(run)
        config = next(r["config"] for r in results["routers"].values() if r["family"] == family.name)
        return RouterConfig.from_json(config)


def _family_repair(run: RunDir, family: FamilyDir, planned: dict[str, RouterConfig]) -> str:
    """The command that trains the family again: its configuration from the run plan, its
    record or results.json, whichever is readable; a co-trained router's is collect's."""
    if family.name in cotrain.FAMILY.values():
        return f"ddnn collect --run {run}"
    config = planned.get(family.name)
    if config is None:
        try:
            config = _recorded_config(run, family)
        except Exception:  # neither record readable: the generic way
            return f"delete {family.root}, then 'ddnn route --run {run} --name {family.name}' with its flags"
    return route_command(run, family.name, config)


def _training(run: RunDir) -> tuple[list[Finding], tuple[int, str] | None]:
    """config.json, metrics.jsonl and the checkpoints; and the best checkpoint's (epoch,
    digest), if there is one."""
    resume = f"ddnn train --out {run} (with the run's flags)"
    try:
        record = read_run_record(run)
    except UsageError as err:
        return [Finding("config.json", DAMAGED if run.config.is_file() else MISSING, str(err), resume)], None
    findings = [Finding("config.json", OK, f"{record.dataset}, seed {record.seed}")]
    try:
        rows = read_metrics(run)
        if rows or record.train.epochs == 0:
            findings.append(Finding("metrics.jsonl", OK, f"{len(rows)} epochs"))
        else:
            findings.append(Finding("metrics.jsonl", MISSING, "no epoch recorded", resume))
    except UsageError as err:
        findings.append(Finding("metrics.jsonl", DAMAGED, str(err), resume))
    best = None
    if run.checkpoints.is_dir():
        try:
            manager = checkpoints.manager(run.checkpoints)
        except UsageError as err:
            return [*findings, Finding("checkpoints/", DAMAGED, str(err), f"{resume} in a new --out")], None
        lost = checkpoints.lost_metrics(manager)
        epoch = None if lost else manager.best_step()
        best = None if epoch is None else (epoch, checkpoints.recorded_digest(manager, epoch))
        manager.close()
        if lost:
            repair = "restore it from a copy, or move that epoch out of checkpoints/"
            return [*findings, Finding("checkpoints/", DAMAGED, lost, repair)], None
    if best is None:
        findings.append(Finding("checkpoints/", MISSING, "no checkpoint", resume))
    else:
        findings.append(_best_restores(run, best, resume))
    return findings, best


def _best_restores(run: RunDir, best: tuple[int, str], resume: str) -> Finding:
    """The best checkpoint read back, and its weights' digest against the one saved with it."""
    epoch, recorded = best
    repair = f"restore checkpoints/{epoch} from a copy, or {resume} in a new --out"
    manager = checkpoints.manager(run.checkpoints)
    try:
        digest = checkpoints.saved_digest(manager, epoch)
    except checkpoints.DamagedCheckpoint as err:
        return Finding("checkpoints/", DAMAGED, str(err), repair)
    finally:
        manager.close()
    if recorded and digest != recorded:
        return Finding("checkpoints/", DAMAGED, f"epoch {epoch}'s weights are not the ones saved", repair)
    return Finding("checkpoints/", OK, f"best epoch {epoch}, read back whole")


def check(run_dir: RunDir | Path) -> list[Finding]:
    """Every artefact of a run against what it records it was made from: ``ddnn check``.

    Args:
      run_dir: a run directory.
    Returns:
      One finding per artefact, in stage order: ok, missing, damaged or stale, with the
      command that repairs it.
    """
    run = as_run(run_dir)
    if not run.root.is_dir():
        raise UsageError(f"{run} is not a directory: give a run directory")
    if StudyDir(run.root).config.is_file():
        return _study(StudyDir(run.root))
    findings, best = _training(run)
    collect = f"ddnn collect --run {run}"
    planned = _planned(run)
    if any(c.kind.needs_features for c in planned.values()):
        collect += " --features"
    fingerprint = None
    try:
        outputs = read_outputs(run)
        epoch = outputs["test"].epoch
        fingerprint = outputs_fingerprint(outputs)
        if best is not None and not same_checkpoint((epoch, outputs["test"].checkpoint), best):
            detail = f"made from epoch {epoch}'s weights, best checkpoint is epoch {best[0]}'s"
            findings.append(Finding("outputs/", STALE, detail, collect))
            fingerprint = None  # what is made from stale outputs is not checked against them
        else:
            findings.append(Finding("outputs/", OK, f"epoch {epoch}"))
    except UsageError as err:
        status = MISSING if not run.outputs_dir.is_dir() else DAMAGED
        findings.append(Finding("outputs/", status, str(err), collect))
    families = _families(run, fingerprint, planned, findings)
    findings += _results(run, fingerprint, families)
    findings += _bottlenecks(run, best)
    findings += _edge_reports(run, fingerprint)
    clean = f"ddnn check --run {run} --clean"
    for path, size in leftovers(run.root).items():
        where = str(path.relative_to(run.root))
        findings.append(Finding(where, LEFTOVER, f"{size:,} bytes a killed write left", clean))
    return findings


def clean(run_dir: RunDir | Path) -> dict[Path, int]:
    """Removes what killed writes left in a run (``ddnn check --clean``): taking the run's lock
    clears all but the edge's, which go then; returns what went, with its size."""
    run = as_run(run_dir)
    if not run.root.is_dir():
        raise UsageError(f"{run} is not a directory: give a run directory")
    with locked(run, "check --clean") as removed:
        rest = leftovers(run.root)  # under edge/, which 'ddnn edge' writes without the lock
        for path in rest:
            remove(path)
    return {**removed, **rest}


def _families(
    run: RunDir, fingerprint: str | None, planned: dict[str, RouterConfig], findings: list[Finding]
) -> dict[str, str]:
    """Appends a finding per router family (planned or present); returns the ok ones' digests."""
    digests = {}
    present = sorted(p.name for p in run.routers.iterdir()) if run.routers.is_dir() else []
    names = list(dict.fromkeys([*planned, *(n for n in present if not n.startswith("."))]))
    for name in names:
        family = run.family(name)
        where = f"routers/{name}/"
        repair = _family_repair(run, family, planned)
        try:
            finding, digest = _family(family, fingerprint)
        except Exception as err:  # anything unreadable in a record is damage, not a crash
            finding, digest = Finding(where, DAMAGED, f"{type(err).__name__}: {err}"), None
        if finding.status != OK:
            finding = dataclasses.replace(finding, repair=repair)
        if digest is not None:
            digests[name] = digest
        findings.append(finding)
    return digests


def _family(family: FamilyDir, fingerprint: str | None) -> tuple[Finding, str | None]:
    """One family's finding, and the fingerprint of its scores when it is ok."""
    where = f"routers/{family.name}/"
    if not family.is_complete():
        return Finding(where, MISSING, "not trained"), None
    try:
        record = read_family(family)
        scores = read_family_scores(family)
    except UsageError as err:
        return Finding(where, DAMAGED, str(err)), None
    if fingerprint is not None and record.made_from != fingerprint:
        return Finding(where, STALE, "trained on other outputs"), None
    return Finding(where, OK, f"{len(record.best_epoch)} router(s)"), family_fingerprint(scores)


def _results(run: RunDir, fingerprint: str | None, families: dict[str, str]) -> list[Finding]:
    evaluate, report = f"ddnn evaluate --run {run}", f"ddnn report --run {run}"
    try:
        results = read_results(run)
    except UsageError as err:
        status = MISSING if not run.results.is_file() else DAMAGED
        return [Finding("results.json", status, str(err), evaluate)]
    try:
        recorded = {r["family"]: r.get("made_from") for r in results["routers"].values()}
    except (AttributeError, KeyError, TypeError) as err:
        return [
            Finding("results.json", DAMAGED, f"its routers are unreadable ({type(err).__name__})", evaluate)
        ]
    if fingerprint is not None and results["made_from"] != fingerprint:
        found = Finding("results.json", STALE, "scored other outputs", evaluate)
    elif recorded != families:
        changed = sorted(
            name for name in set(recorded) | set(families) if recorded.get(name) != families.get(name)
        )
        found = Finding("results.json", STALE, f"router family {changed[0]} changed since", evaluate)
    else:
        found = Finding("results.json", OK)
    findings = [found]
    if not run.report.is_file():
        findings.append(Finding("report.md", MISSING, "", report))
    elif run.report.stat().st_mtime_ns < run.results.stat().st_mtime_ns:
        findings.append(Finding("report.md", STALE, "older than results.json", report))
    else:
        findings.append(Finding("report.md", OK))
    return findings


def _study(study: StudyDir) -> list[Finding]:
    """A study directory: its config and aggregate readable as ``ddnn study`` reads them, and
    every seed's run checked as a run, its findings under the seed's folder."""
    aggregate = f"ddnn study --aggregate {study}"
    findings = []
    for path, repair in (
        (study.config, f"delete it, then rerun the 'ddnn study' that made {study}"),
        (study.results, aggregate),
    ):
        where = path.name
        if not path.is_file():
            findings.append(Finding(where, MISSING, "", repair))
            continue
        try:
            if not isinstance(read_json(path, repair), dict):
                raise UsageError(f"{path} is not a JSON object: {repair}")
            findings.append(Finding(where, OK))
        except UsageError as err:
            findings.append(Finding(where, DAMAGED, str(err), repair))
    for run in study.runs():
        for f in check(run):
            findings.append(dataclasses.replace(f, artefact=f"{run.root.name}/{f.artefact}"))
    return findings


def _bottlenecks(run: RunDir, best: tuple[int, str] | None) -> list[Finding]:
    """Each learned bottleneck: readable whole, and fine-tuned on the run's best checkpoint."""
    folder = run.root / BOTTLENECKS
    names = sorted(d.name for d in folder.iterdir() if not d.name.startswith(".")) if folder.is_dir() else []
    findings = []
    for name in names:
        where, bottleneck = f"bottlenecks/{name}/", run.bottleneck(name)
        named = re.fullmatch(r"k(\d+)-b(\d+)-s(\d+)", name)
        flags = "" if named is None else " --channels {} --bits {} --stride {}".format(*named.groups())
        repair = f"ddnn bottleneck --run {run}{flags}"
        try:
            record = read_bottleneck(bottleneck)
            read_bottleneck_logits(bottleneck)
            read_coded_bytes(bottleneck)
        except UsageError as err:
            findings.append(Finding(where, DAMAGED, str(err), repair))
            continue
        if best is not None and best[1] and record.made_from != best[1]:
            findings.append(Finding(where, STALE, "fine-tuned on another checkpoint", repair))
        else:
            findings.append(Finding(where, OK, f"{record.payload_bytes} B per offload"))
    return findings


def _edge_reports(run: RunDir, fingerprint: str | None) -> list[Finding]:
    """Each live edge run's report: a JSON object of the outputs the run has now."""
    folder = run.root / EDGE
    paths = sorted(folder.glob("*/edge_report.json")) if folder.is_dir() else []
    paths += [run.edge_sweep] if run.edge_sweep.is_file() else []
    findings = []
    for path in paths:
        where, repair = str(path.relative_to(run.root)), "rerun the 'ddnn edge' that wrote it"
        try:
            report = read_json(path, "delete it and rerun 'ddnn edge'")
            if not isinstance(report, dict) or not isinstance(report.get("made_from"), str):
                raise UsageError("not an edge report (a JSON object with made_from)")
        except UsageError as err:
            findings.append(Finding(where, DAMAGED, str(err), repair))
            continue
        if fingerprint is not None and report["made_from"] != fingerprint:
            findings.append(Finding(where, STALE, "measured on other outputs", repair))
        else:
            findings.append(Finding(where, OK))
    return findings


def summary(findings: list[Finding]) -> str:
    bad = [f for f in findings if f.status != OK]
    return "all ok" if not bad else f"{len(bad)} of {len(findings)} artefacts need repair"
