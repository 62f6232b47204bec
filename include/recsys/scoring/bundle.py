"""The model bundle: factors, the id maps they were trained with (bound by a content hash),
item popularity, the seen filter and segment popularity; saved as ``.npz`` + Parquet (no pickle).

``kind`` names the model family (:mod:`include.recsys.backends.families`). ``als`` (the default)
scores ``user_factors @ item_factors.T``; the item-item families (``item_knn``, ``ease``) score
``user_items @ item_item``: they carry the item x item matrix (sparse CSR for kNN, dense for
EASE) and the training user x item matrix, and zero-width factors (``(n, 0)``) so that every
shape check on factors still holds. An ALS bundle's files are exactly what they were before
families existed; the other kinds add arrays to ``factors.npz`` and ``kind`` to ``bundle.json``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from include.recsys.errors import IdMapMismatch

log = logging.getLogger(__name__)


BUNDLE_FORMAT = 1


def id_maps_sha256(user_ids: pd.Index, item_ids: pd.Index) -> str:
    """Content hash of the (user, item) id maps in index order: the version of the embeddings."""
    import hashlib

    h = hashlib.sha256()
    for name, ids in (("users", user_ids), ("items", item_ids)):
        h.update(f"{name}:{len(ids)}\n".encode())
        # object array first: iterating an Arrow-backed Index yields its strings one by one (slow)
        h.update("\x1f".join(map(str, np.asarray(ids, dtype=object))).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class ModelBundle:
    user_ids: pd.Index
    item_ids: pd.Index
    user_factors: np.ndarray  # (n_users, f) float32
    item_factors: np.ndarray  # (n_items, f) float32
    item_popularity: np.ndarray  # (n_items,) distinct training users per item
    seen: sp.csr_matrix | None = None  # (n_users, n_items) training interactions, for filtering
    segment_ids: pd.Index | None = None  # user segments seen in training (e.g. regions)
    segment_popularity: np.ndarray | None = None  # (n_segments, n_items) distinct users per item
    # hash of the id maps the factors were trained with (set by the trainer, stored with the
    # factors, checked on load and before scoring): factors are never read through another
    # run's id maps. None: not bound yet (a hand-made bundle); save() binds the current ids.
    id_maps_hash: str | None = None
    kind: str = "als"  # model family: als | item_knn | ease
    item_item: np.ndarray | sp.csr_matrix | None = None  # (n_items, n_items), item-item kinds
    user_items: sp.csr_matrix | None = None  # (n_users, n_items) training matrix, item-item kinds

    def verify_id_maps(self) -> None:
        """Raise :class:`IdMapMismatch` unless ids, factor shapes and the bound hash agree."""
        if self.user_factors.shape[0] != len(self.user_ids) or self.item_factors.shape[0] != len(self.item_ids):
            raise IdMapMismatch(
                f"factors ({self.user_factors.shape[0]} users x {self.item_factors.shape[0]} items) "
                f"do not match the id maps ({len(self.user_ids)} users, {len(self.item_ids)} items)"
            )
        if self.kind != "als":
            self._verify_item_item()
        if self.id_maps_hash is None:
            return
        actual = id_maps_sha256(self.user_ids, self.item_ids)
        if actual != self.id_maps_hash:
            raise IdMapMismatch(
                f"the factors were trained with id maps {self.id_maps_hash[:12]}..., but the bundle's "
                f"id maps hash to {actual[:12]}... (id maps of another run?)"
            )

    def _verify_item_item(self) -> None:
        """An item-item bundle needs its (n_items, n_items) matrix and the training rows of its
        users (a bundle that knows no user, the popularity baseline, needs no rows)."""
        n_items = len(self.item_ids)
        if self.item_item is None or self.item_item.shape != (n_items, n_items):
            got = None if self.item_item is None else self.item_item.shape
            raise IdMapMismatch(f"{self.kind} bundle: item-item matrix {got}, expected ({n_items}, {n_items})")
        rows = self.user_items.shape if self.user_items is not None else None
        if len(self.user_ids) and (rows is None or rows != (len(self.user_ids), n_items)):
            raise IdMapMismatch(
                f"{self.kind} bundle: training matrix {rows}, expected ({len(self.user_ids)}, {n_items})"
            )

    @property
    def is_item_item(self) -> bool:
        return self.kind != "als"

    @property
    def popular_order(self) -> np.ndarray:
        """Item indices by decreasing popularity (ties: lower index first)."""
        return np.argsort(-self.item_popularity, kind="stable")

    def fallback_popularity(self, segment: str | None = None) -> np.ndarray:
        """Item popularity of a segment (the global one for None or an unknown segment)."""
        if segment is not None and self.segment_ids is not None:
            pos = self.segment_ids.get_indexer([segment])[0]
            if pos >= 0:
                return self.segment_popularity[pos]
        return self.item_popularity

    def fallback_list(
        self, n: int, segment: str | None = None, allowed: np.ndarray | None = None
    ) -> pd.DataFrame:
        """The top-n fallback list (rank, item_id, score in [0, 1]) of a segment or global;
        only ``allowed`` items (bool per item, the business rules) when given."""
        pop = self.fallback_popularity(segment)
        order = np.argsort(-pop, kind="stable")
        if allowed is not None:
            order = order[np.asarray(allowed, dtype=bool)[order]]
        order = order[:n]
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1, dtype=np.int16),
                "item_id": self.item_ids[order],
                "score": (pop[order] / max(float(pop.max()), 1.0)).astype(np.float32),
            }
        )

    def save(self, folder: Path | str) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.verify_id_maps()
        if self.id_maps_hash is None:
            self.id_maps_hash = id_maps_sha256(self.user_ids, self.item_ids)
        arrays = {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "id_maps_sha256": np.array(self.id_maps_hash),
        }
        if self.seen is not None:
            arrays.update(seen_indptr=self.seen.indptr, seen_indices=self.seen.indices)
        if self.kind != "als":
            arrays.update(_item_item_arrays(self))
        if self.segment_ids is not None:
            arrays.update(segment_popularity=self.segment_popularity)
            pd.DataFrame({"segment": self.segment_ids.astype(str)}).to_parquet(
                folder / "segments.parquet", index=False
            )
        np.savez(folder / "factors.npz", **arrays)
        pd.DataFrame({"user_id": self.user_ids}).to_parquet(folder / "users.parquet", index=False)
        pd.DataFrame({"item_id": self.item_ids, "popularity": self.item_popularity}).to_parquet(
            folder / "items.parquet", index=False
        )
        meta = {
            "format": BUNDLE_FORMAT,
            "n_users": len(self.user_ids),
            "n_items": len(self.item_ids),
            "factors": int(self.user_factors.shape[1]),
        }
        if self.kind != "als":  # an ALS bundle.json stays as it always was
            meta["kind"] = self.kind
            meta["item_item"] = "sparse" if sp.issparse(self.item_item) else "dense"
        (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> ModelBundle:
        folder = Path(folder)
        meta = json.loads((folder / "bundle.json").read_text()) if (folder / "bundle.json").exists() else {}
        kind = str(meta.get("kind", "als"))
        with np.load(folder / "factors.npz", allow_pickle=False) as z:
            uf, vf = z["user_factors"], z["item_factors"]
            item_item, user_items = _load_item_item(z, kind, uf.shape[0], vf.shape[0])
            seen = None
            if "seen_indptr" in z.files:
                indices = z["seen_indices"]
                seen = sp.csr_matrix(
                    (np.ones(indices.size, np.float32), indices, z["seen_indptr"]),
                    shape=(uf.shape[0], vf.shape[0]),
                )
            seg_pop = z["segment_popularity"] if "segment_popularity" in z.files else None
            stored_hash = str(z["id_maps_sha256"]) if "id_maps_sha256" in z.files else None
        items = pd.read_parquet(folder / "items.parquet")
        seg_ids = (
            pd.Index(pd.read_parquet(folder / "segments.parquet")["segment"])
            if seg_pop is not None
            else None
        )
        bundle = cls(
            user_ids=pd.Index(pd.read_parquet(folder / "users.parquet")["user_id"]),
            item_ids=pd.Index(items["item_id"]),
            user_factors=np.ascontiguousarray(uf, dtype=np.float32),
            item_factors=np.ascontiguousarray(vf, dtype=np.float32),
            item_popularity=items["popularity"].to_numpy(),
            seen=seen,
            segment_ids=seg_ids,
            segment_popularity=seg_pop,
            id_maps_hash=stored_hash,  # None: a bundle saved before hashes existed
            kind=kind,
            item_item=item_item,
            user_items=user_items,
        )
        try:
            bundle.verify_id_maps()
        except IdMapMismatch as exc:
            raise IdMapMismatch(f"bundle {folder}: {exc}") from None
        return bundle

    def seen_pairs(self, users: pd.Index) -> pd.DataFrame:
        """The training (user_id, item_id) pairs of the given users (empty without ``seen``)."""
        if self.seen is None:
            return pd.DataFrame({"user_id": [], "item_id": []})
        uidx = self.user_ids.get_indexer(pd.Index(users))
        sub = self.seen[uidx[uidx >= 0]].tocoo()
        return pd.DataFrame(
            {
                "user_id": self.user_ids[uidx[uidx >= 0][sub.row]],
                "item_id": self.item_ids[sub.col],
            }
        )


def _item_item_arrays(bundle: ModelBundle) -> dict[str, np.ndarray]:
    """The arrays an item-item bundle adds to ``factors.npz`` (CSR parts or the dense matrix)."""
    out: dict[str, np.ndarray] = {}
    if sp.issparse(bundle.item_item):
        s = sp.csr_matrix(bundle.item_item)
        out.update(item_item_data=s.data, item_item_indices=s.indices, item_item_indptr=s.indptr)
    else:
        out["item_item"] = np.asarray(bundle.item_item)
    if bundle.user_items is not None and len(bundle.user_ids):
        u = sp.csr_matrix(bundle.user_items)
        out.update(user_items_data=u.data, user_items_indices=u.indices, user_items_indptr=u.indptr)
    return out


def _load_item_item(z, kind: str, n_users: int, n_items: int) -> tuple[np.ndarray | sp.csr_matrix | None, sp.csr_matrix | None]:
    """(item_item, user_items) of a saved item-item bundle; (None, None) for ALS."""
    if kind == "als":
        return None, None
    if "item_item" in z.files:
        item_item = np.ascontiguousarray(z["item_item"])
    elif "item_item_data" in z.files:
        item_item = sp.csr_matrix(
            (z["item_item_data"], z["item_item_indices"], z["item_item_indptr"]), shape=(n_items, n_items)
        )
    else:
        raise IdMapMismatch(f"a {kind} bundle without its item-item matrix in factors.npz (a partial save?)")
    user_items = None
    if "user_items_data" in z.files:
        user_items = sp.csr_matrix(
            (z["user_items_data"], z["user_items_indices"], z["user_items_indptr"]), shape=(n_users, n_items)
        )
    return item_item, user_items
