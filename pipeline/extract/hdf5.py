"""HDF5 import/export of stage-one features, for exchange with other captioning projects.

Export: one HDF5 file with one dataset per clip id per array, `/<array>/<clip_id>`, e.g.
`/vid/tokens/clip0001` (L, C) float16, `/er/feats/clip0001` (F, 2048); only clips marked done.
The store's attributes go to the file's root attributes (JSON strings).

Import: feature files as MSVD / MSR-VTT projects ship them (e.g. appearance features): one dataset per
video id, frames x dims, either at the root or under a group. `import_hdf5` copies them into an
existing store's array (by default `vid/tokens`) for the store's clip ids, checking every shape
first and reporting all missing ids together, before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

ARRAYS = ("vid/tokens", "er/feats", "er/logits", "au/feats", "au/probs", "face/boxes")


class FeatureFileError(UserError):
    """An HDF5 feature file that does not fit the store (missing ids, other shapes)."""


def export_hdf5(store_path: str | Path, h5_path: str | Path, arrays: tuple[str, ...] = ARRAYS,
                only_done: bool = True) -> int:
    """Write the store's per-clip arrays to `h5_path` as /<array>/<clip_id>. Returns the clips written."""
    import h5py

    from pipeline.extract.store import open_store, validate_store

    g = open_store(store_path)
    validate_store(g, store_path)
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    done = np.asarray(g["done"][:], dtype=bool) if only_done else np.ones(len(ids), bool)
    rows = np.flatnonzero(done)
    Path(h5_path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(h5_path, "w") as f:
        for k, v in dict(g.attrs).items():
            f.attrs[k] = json.dumps(v)
        for name in arrays:
            data = g[name]
            grp = f.require_group(name)
            for i in rows:
                grp.create_dataset(ids[i], data=np.asarray(data[int(i)]))
    return len(rows)


def read_hdf5_clip(h5_path: str | Path, array: str, clip_id: str) -> np.ndarray:
    import h5py

    with h5py.File(h5_path, "r") as f:
        return np.asarray(f[array][clip_id])


def import_hdf5(h5_path: str | Path, store_path: str | Path, *, array: str = "vid/tokens", group: str = "",
                id_map: dict[str, str] | None = None, allow_missing: bool = False) -> dict:
    """Copy per-video datasets of `h5_path` (under `group`, '' = root) into `array` of the store at
    `store_path`, for each of the store's clip ids (`id_map`: clip id -> dataset name, when the file
    names videos differently, e.g. MSVD's youtube ids). Every dataset must have the store's per-clip
    shape. Missing ids raise FeatureFileError listing them all (unless `allow_missing`). Does not mark
    clips done: the other arrays still come from extraction. Returns {'imported', 'missing'}."""
    import h5py

    from pipeline.extract.store import open_store

    g = open_store(store_path, mode="r+")
    if array not in g:
        raise FeatureFileError(f"{store_path}: the store has no array {array!r} (arrays: {', '.join(ARRAYS)})")
    target = g[array]
    per_clip = tuple(target.shape[1:])
    ids = [str(x) for x in np.asarray(g["clip_id"][:])]
    id_map = id_map or {}
    with h5py.File(h5_path, "r") as f:
        root = f[group] if group else f
        missing, bad_shape, found = [], [], []
        for i, cid in enumerate(ids):
            name = id_map.get(cid, cid)
            if name not in root or not isinstance(root[name], h5py.Dataset):
                missing.append(name)
                continue
            shape = tuple(root[name].shape)
            if shape != per_clip:
                bad_shape.append(f"{name} {shape}")
                continue
            found.append((i, name))
        if bad_shape:
            head = ", ".join(bad_shape[:5]) + (f" (and {len(bad_shape) - 5} more)" if len(bad_shape) > 5 else "")
            raise FeatureFileError(f"{h5_path}: {len(bad_shape)} datasets do not have the store's {array} shape "
                                   f"{per_clip}: {head}")
        if missing and not allow_missing:
            head = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
            where = f" under /{group}" if group else ""
            raise FeatureFileError(f"{h5_path}: {len(missing)} of {len(ids)} clips have no dataset{where}: {head}")
        for i, name in found:
            target[i] = np.asarray(root[name]).astype(target.dtype)
    g.attrs[f"imported:{array}"] = {"file": str(h5_path), "group": group, "clips": len(found)}
    return {"imported": len(found), "missing": missing}
