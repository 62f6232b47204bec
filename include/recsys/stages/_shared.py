"""What several stages share: the run's frozen business rules and A/B variant models, the
already-served test, validation logging to MLflow and reading a version's fallback lists.
A stage never imports another stage; whatever two of them need lives here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from include.recsys.config.settings import PipelineConfig
from include.recsys.core.io import read_json
from include.recsys.core.run import RunContext

log = logging.getLogger(__name__)


def _already_served(cfg: PipelineConfig, rc: RunContext) -> bool:
    from include.recsys.tables.current import read_current

    if read_current(cfg.recommendations_root) == rc.version:  # a rerun after this run published
        log.info("version %s is already served; not recomputing it", rc.version)
        return True
    return False


def item_rules(cfg: PipelineConfig, rc: RunContext) -> Any:
    """The run's business rules (:mod:`include.recsys.scoring.rules`), None when none are configured.

    Resolved once per run at the data interval end (never now()) and frozen in the work folder,
    so every shard, the fallback lists, the output checks and the similar-items table use the
    same exclusions. A bad rules file raises :class:`~include.recsys.errors.RulesError` (a
    SourceError: no retries) before anything is written, unless ``item_rules_on_error`` is
    ``keep_previous`` and a last good copy exists under ``<data_dir>/rules``.
    """
    if not cfg.item_rules_path:
        return None
    from include.recsys.scoring.rules import load_for_run, read_resolved, save_resolved

    folder = rc.paths(cfg).rules
    frozen = read_resolved(folder)
    if frozen is not None:
        return frozen
    loaded = load_for_run(cfg.item_rules_path, rc.end, on_error=cfg.item_rules_on_error,
                                keep_dir=cfg.data_dir / "rules", surface=cfg.item_rules_surface)
    return save_resolved(loaded, folder)


def _table_columns(plan: Any) -> dict[str, Any]:
    """write_part / finalize_version keywords: the ``variant`` column only with variants."""
    from include.recsys.scoring.variants import COLUMN
    from include.recsys.tables.layout import TABLE_COLUMNS

    return {} if plan is None else {"columns": [*TABLE_COLUMNS, COLUMN]}


def _variant_models(cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], reg: dict[str, Any],
                    plan: Any) -> dict[str, tuple[str, str]]:
    """Variant name -> (bundle folder, model version), resolved once per run (aliases read
    when the first shard runs) and frozen in ``<work>/variants/models.json``."""
    import os

    from include.recsys.errors import VariantError
    from include.recsys.tracking.registry import alias_version

    folder = rc.paths(cfg).variants
    frozen = folder / "models.json"
    if frozen.exists():
        return {k: tuple(v) for k, v in read_json(frozen).items()}
    out: dict[str, tuple[str, str]] = {}
    for v in plan.variants:
        if v.model == "candidate":
            out[v.name] = (str(model["bundle"]), str(reg["model_version"]))
            continue
        kind, _, ref = v.model.partition(":")
        version = alias_version(cfg, ref) if kind == "alias" else ref
        if version is None:
            raise VariantError(f"variant {v.name}: model alias {ref!r} of {cfg.model_name} does not exist; "
                               "point it at a version, or change RECSYS_AB_VARIANTS")
        out[v.name] = (str(_download_version(cfg, str(version), folder / f"v{version}")), str(version))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".models.{os.getpid()}.json"
    tmp.write_text(json.dumps(out))
    try:
        os.link(tmp, frozen)  # first writer wins: every shard scores with the same versions
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return {k: tuple(v) for k, v in read_json(frozen).items()}


def _download_version(cfg: PipelineConfig, version: str, dst: Path) -> Path:
    """The bundle folder of registered model ``version`` (downloaded once into ``dst``)."""
    import os
    import shutil

    from include.recsys.errors import VariantError
    from include.recsys.tracking.mlflow import _is_unreachable, _mlflow
    from include.recsys.tracking.registry import _bundle_folder

    if (dst / "bundle").exists():
        return dst / "bundle"
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    try:
        local = _mlflow(cfg).artifacts.download_artifacts(
            artifact_uri=f"models:/{cfg.model_name}/{version}", dst_path=str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_unreachable(exc):
            raise
        raise VariantError(f"model version {version} of {cfg.model_name} cannot be loaded for a variant: {exc}") from exc
    dst.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(_bundle_folder(Path(local)), dst / "bundle")
    except OSError:  # another shard finished first
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return dst / "bundle"


def _score_variants(cfg: PipelineConfig, rc: RunContext, model: dict[str, Any], reg: dict[str, Any],
                    plan: Any, bundle: Any, users: pd.Index, seen: Any, rules: Any) -> tuple[pd.DataFrame, dict, int]:
    """One shard's lists with the ``variant`` column (see :func:`include.recsys.scoring.variants.score`)."""
    from include.recsys.data.source import read_segments
    from include.recsys.scoring.bundle import ModelBundle
    from include.recsys.scoring.variants import score

    models = _variant_models(cfg, rc, model, reg, plan)
    bundles = {name: (bundle if path == str(model["bundle"]) else ModelBundle.load(path), version)
               for name, (path, version) in models.items()}
    # a seen CSR is in the candidate's item space; variants.score remaps it for other bundles
    return score(
        bundles, plan, users, seen, cfg.top_n, model_name=reg["model_name"],
        baseline_of=(bundle, str(reg["model_version"])),
        allowed_of=(lambda b: rules.allowed_mask(b.item_ids)) if rules is not None else None,
        block_size=cfg.score_block_size, user_segments=read_segments(cfg),
    )


def run_seen(cfg: PipelineConfig, rc: RunContext, snapshot: Path | str, users: Path | str | None,
             items: Path | str | None) -> Path:
    """Folder of the run's seen pattern: every snapshot (user_idx, item_idx) pair as one binary
    canonical CSR (snapshot users x snapshot items), ``indptr.npy`` / ``indices.npy``.

    Built once per run by whichever of ``register`` / ``plan_shards`` comes first and reused by
    the other and by every shard (:func:`include.recsys.core.ids.reindex_csr` slices and maps
    it into a model's users and items), instead of each of them sorting the 17M pairs again.
    It is keyed by the snapshot file (inode, size, mtime): a rerun snapshot rebuilds it.
    A snapshot without codes or maps raises :class:`~include.recsys.errors.IdRouteError`.
    """
    import os
    import shutil

    import numpy as np

    from include.recsys.core.ids import csr_from_codes, read_codes, read_id_maps
    from include.recsys.core.io import read_json_or_none

    folder = rc.paths(cfg).precompute / "seen"
    st = os.stat(snapshot)
    key = {"snapshot": str(snapshot), "inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if read_json_or_none(folder / "key.json") == key:
        return folder
    user_map, item_map = read_id_maps(users, items, snapshot)
    u, i = read_codes(snapshot, (len(user_map), len(item_map)), allow_missing=True)
    missing = int(np.count_nonzero((u < 0) | (i < 0)))  # rows with a missing id: no pair
    seen = csr_from_codes(u, i, None, (len(user_map), len(item_map)))  # pairs with a missing id dropped
    del u, i
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".seen.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.save(tmp / "indptr.npy", seen.indptr)
    np.save(tmp / "indices.npy", seen.indices)
    (tmp / "missing.json").write_text(json.dumps({"rows_with_a_missing_id": missing}))
    (tmp / "key.json").write_text(json.dumps(key))  # last: a folder with a key is complete
    shutil.rmtree(folder, ignore_errors=True)  # built from an earlier snapshot of this run
    try:
        os.replace(tmp, folder)
    except OSError:  # another task put the same pattern there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_seen(folder: Path | str) -> tuple[Any, Any]:
    """(indptr, indices) of a :func:`run_seen` folder, memory-mapped (read as sliced)."""
    import numpy as np

    folder = Path(folder)
    return np.load(folder / "indptr.npy", mmap_mode="r"), np.load(folder / "indices.npy", mmap_mode="r")


def seen_missing_rows(folder: Path | str) -> int:
    """Snapshot rows with a missing id (code -1) that a :func:`run_seen` folder left out."""
    return int(read_json(Path(folder) / "missing.json")["rows_with_a_missing_id"])


def _log_validation_to_mlflow(cfg: PipelineConfig, rc: RunContext) -> None:
    """Validation counts (input + output) as metrics and ``<work>/validation`` (reports, Data
    Docs) as artifacts of this DAG run's MLflow run. Best effort: never changes a verdict."""
    from include.recsys.tracking.runs import get_or_create_run, log_to_run

    paths = rc.paths(cfg)
    metrics: dict[str, float] = {}
    for kind, path in (("input", paths.input_report), ("output", paths.output_report)):
        if path.exists():
            counts = read_json(path).get("counts") or {}
            metrics.update({f"validation_{kind}_{k}": float(v) for k, v in counts.items()})
    try:
        run_id = get_or_create_run(cfg, rc.run_id, rc.mlflow_tags())
        log_to_run(cfg, run_id, metrics=metrics, artifacts={"validation": paths.validation})
    except Exception:  # MLflow down: the reports stay in the work folder; publish will retry MLflow
        log.warning("could not log the validation reports to MLflow", exc_info=True)


def _manifest_variants(root: Path | str, version: str) -> dict[str, Any] | None:
    """The ``variants`` block of a version's manifest (None: no A/B variants)."""
    from include.recsys.tables.manifest import read_manifest

    return read_manifest(root, version).get("variants")


def _read_fallback(root: Path | str, version: str) -> pd.DataFrame:
    """The ``_fallback.parquet`` lists of a (possibly unpublished) version."""
    import io

    from include.recsys.tables.layout import FALLBACK, _store, version_dir

    store = _store(root)
    if store is not None:
        return pd.read_parquet(io.BytesIO(store.read_bytes(f"version={version}/{FALLBACK}")))
    return pd.read_parquet(version_dir(root, version) / FALLBACK)
