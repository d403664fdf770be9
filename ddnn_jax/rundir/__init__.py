"""The run directory: every file and folder name in it, the records written there, atomic writes
of files and directories, the readers, and the trained artefacts as live objects. No other module
spells a path inside a run.

``layout`` names the paths, ``files`` writes and locks them safely, ``records`` holds config.json,
metrics, outputs and router families, ``results`` the schema of results.json and the readers of
other measurements, ``artefacts`` restores checkpoints and routers, and ``checkpoints`` wraps
Orbax. Import the names from this package: ``from ddnn_jax.rundir import RunDir, read_outputs``.

::

    RUN_DIR/
      config.json              RunRecord: the resolved training configuration and its source
      metrics.jsonl            one row per trained epoch
      checkpoints/             Orbax checkpoints of the TrainState, step = completed epoch
      outputs/{split}.npz      SplitOutputs of the best epoch, one file per split
      routers/NAME/            one router family: router.json (FamilyRecord), scores.npz
                               (router logits [G, N] per split), variables/ (Orbax, stacked over G)
      run_plan.json            the RunPlan of ``ddnn run``
      weight_sweep/wW_seedS/   the local-weight study's short runs, each a run directory itself
      bench_inference.json     Fig. 6.5's timings of this run
      results.json             Results: every mechanism on the test split
      edge/NAME/edge_report.json   one run of the edge half against 'ddnn serve' (``ddnn edge``)
      edge/sweep.json          accuracy against bytes on the wire, every target and wire
      report.md, figures/      the report and its figures, drawn from results.json and edge/

A study (``ddnn study``) is a directory of such runs, one per seed::

    STUDY_DIR/
      study_config.json        the flags every seed's run shares (all but the seed)
      seed_S/                  one run directory per seed
      study.json, study.md     the aggregate over seeds and its report; figures/ beside them

Every record says what it was made from: outputs carry the epoch of the checkpoint they come
from, a router family the fingerprint of the outputs it was trained on, and the results the
fingerprint of the outputs they score. Files are written under a temporary name and renamed into
place; directories are built beside their final name and renamed in, so a reader sees a whole
artefact or none.
"""

from ddnn_jax.core.outputs import SplitOutputs
from ddnn_jax.rundir.artefacts import (
    DeployedRouter,
    best_checkpoint,
    deployed_router,
    outputs_complete,
    restore_best,
    run_data,
    same_checkpoint,
    split_images,
)
from ddnn_jax.rundir.files import (
    NPZ_ERRORS,
    atomic_dir,
    atomic_file,
    locked,
    prepare_file,
    read_json,
    save_npz,
    write_json,
    write_text,
)
from ddnn_jax.rundir.layout import (
    BENCH_INFERENCE,
    CHECKPOINTS,
    CONFIG,
    EDGE,
    EDGE_REPORT,
    EDGE_SWEEP,
    FAMILY_RECORD,
    FAMILY_SCORES,
    FAMILY_VARIABLES,
    FIGURES,
    LOCK,
    METRICS,
    OUTPUTS,
    REPORT,
    RESULTS,
    ROUTERS,
    RUN_PLAN,
    SPLITS,
    STUDY_CONFIG,
    STUDY_REPORT,
    STUDY_RESULTS,
    TORCH_CHECKPOINTS,
    WEIGHT_SWEEP,
    BottleneckDir,
    FamilyDir,
    RunDir,
    StudyDir,
    as_run,
)
from ddnn_jax.rundir.records import (
    IMPORTED,
    FamilyRecord,
    RunRecord,
    check_for_training,
    family_fingerprint,
    outputs_fingerprint,
    outputs_source,
    read_family,
    read_family_scores,
    read_metrics,
    read_oof_outputs,
    read_outputs,
    read_run_record,
    write_family,
    write_metrics,
    write_oof_outputs,
    write_outputs,
    write_run_record,
)
from ddnn_jax.rundir.results import (
    Comparison,
    Point,
    Results,
    RouterResult,
    SweepRun,
    TestAnalysis,
    UnconstrainedPoint,
    read_edge_reports,
    read_edge_sweep,
    read_inference_timings,
    read_results,
    write_results,
)

__all__ = [
    "BENCH_INFERENCE",
    "CHECKPOINTS",
    "TORCH_CHECKPOINTS",
    "CONFIG",
    "Comparison",
    "DeployedRouter",
    "EDGE",
    "EDGE_REPORT",
    "EDGE_SWEEP",
    "FAMILY_RECORD",
    "FAMILY_SCORES",
    "FAMILY_VARIABLES",
    "FIGURES",
    "BottleneckDir",
    "FamilyDir",
    "FamilyRecord",
    "IMPORTED",
    "LOCK",
    "METRICS",
    "NPZ_ERRORS",
    "OUTPUTS",
    "Point",
    "REPORT",
    "RESULTS",
    "ROUTERS",
    "RUN_PLAN",
    "Results",
    "RouterResult",
    "RunDir",
    "RunRecord",
    "SPLITS",
    "STUDY_CONFIG",
    "STUDY_REPORT",
    "STUDY_RESULTS",
    "SplitOutputs",
    "StudyDir",
    "SweepRun",
    "TestAnalysis",
    "UnconstrainedPoint",
    "WEIGHT_SWEEP",
    "as_run",
    "atomic_dir",
    "atomic_file",
    "best_checkpoint",
    "check_for_training",
    "deployed_router",
    "family_fingerprint",
    "locked",
    "outputs_complete",
    "outputs_fingerprint",
    "outputs_source",
    "prepare_file",
    "read_edge_reports",
    "read_edge_sweep",
    "read_family",
    "read_family_scores",
    "read_inference_timings",
    "read_json",
    "read_metrics",
    "read_oof_outputs",
    "read_outputs",
    "read_results",
    "read_run_record",
    "restore_best",
    "run_data",
    "same_checkpoint",
    "save_npz",
    "split_images",
    "write_family",
    "write_json",
    "write_metrics",
    "write_oof_outputs",
    "write_outputs",
    "write_results",
    "write_run_record",
    "write_text",
]
