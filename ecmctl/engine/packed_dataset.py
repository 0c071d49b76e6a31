"""mmdet datasets on a packed annotation file (config types `ecmctl.PackedLVISV1Dataset`,
`ecmctl.PackedCocoDataset` and `ecmctl.ClassBalancedDataset`).

They are mmdet's LVISV1Dataset and CocoDataset (same metainfo, data_prefix, filter_cfg, test_mode), except
that the data list is never built: `full_init` maps the node's pack (ecmctl.dataset.packcache) and
`get_data_info(i)` decodes image i only. Pickled (to spawned data-loader workers, deep copies), a dataset
carries the pack's path and its index, and maps the file again where it lands. ClassBalancedDataset is
mmengine's, with the repeat factors computed from the packed labels in one pass.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from mmdet.datasets import CocoDataset, LVISV1Dataset
from mmengine.dataset import ClassBalancedDataset as MMEngineClassBalancedDataset
from mmengine.registry import DATASETS

from ecmctl.core.errors import UserError
from ecmctl.dataset import packcache, packed
from ecmctl.engine.compat import scope_registry


class _Packed:
    """What both packed datasets add to their mmdet class."""

    VARIANT = "lvis"

    def __init__(self, *args, cache_dir: str | None = None, **kwargs) -> None:
        self.cache_dir = cache_dir
        self._arrays: dict[str, np.ndarray] | None = None
        self._pack_path = None
        self._index = np.zeros(0, np.int64)
        super().__init__(*args, **kwargs)

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        if self.proposal_file is not None or self.return_classes:
            raise UserError(f"{type(self).__name__}: proposal_file and return_classes are not supported; use "
                            "dataset.packed=false")
        self._arrays, header, self._pack_path = packcache.load(
            self.ann_file, self.VARIANT, self.metainfo["classes"], self.cache_dir)
        self.cat_ids = header["cat_ids"]
        self.cat2label = {c: i for i, c in enumerate(self.cat_ids)}
        if self.test_mode or self.filter_cfg is None:
            index = np.arange(self._arrays["img_id"].size)
        else:
            index = packed.kept_images(self._arrays, bool(self.filter_cfg.get("filter_empty_gt", False)),
                                       self.filter_cfg.get("min_size", 0))
        self._index = index if self._indices is None else _subset(index, self._indices)
        self.data_list = []  # never built: see get_data_info
        self._fully_initialized = True

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The pack's arrays, mapped again after unpickling."""
        if self._arrays is None:
            self._arrays, _ = packed.open_pack(self._pack_path, verify=False)
        return self._arrays

    @property
    def image_index(self) -> np.ndarray:
        """For each dataset index, the image's row in the pack."""
        self.full_init()
        return self._index

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._pack_path is not None:
            state["_arrays"] = None
        return state

    def __len__(self) -> int:
        self.full_init()
        return int(self._index.size)

    def get_data_info(self, idx: int) -> dict:
        self.full_init()
        idx = int(idx)
        info = packed.data_info(self.arrays, int(self._index[idx]), self.data_prefix["img"],
                                self.data_prefix.get("seg"), self.seg_map_suffix)
        info["sample_idx"] = idx if idx >= 0 else len(self) + idx
        return info

    def get_cat_ids(self, idx: int) -> list[int]:
        self.full_init()
        return packed.cat_ids(self.arrays, int(self._index[int(idx)]))

    def get_subset_(self, indices: Sequence[int] | int) -> None:
        self.full_init()
        self._index = _subset(self._index, indices)

    def get_subset(self, indices: Sequence[int] | int):
        self.full_init()
        sub = copy.copy(self)
        sub._index = _subset(self._index, indices)
        return sub


def _subset(index: np.ndarray, indices: Sequence[int] | int) -> np.ndarray:
    """mmengine's get_subset semantics: an int keeps the first n (negative: the last n), a list those."""
    if isinstance(indices, int):
        return index[:indices] if indices >= 0 else index[indices:]
    return index[np.asarray(indices, np.int64)]


@scope_registry(DATASETS).register_module(name="PackedLVISV1Dataset")
class PackedLVISV1Dataset(_Packed, LVISV1Dataset):
    """LVISV1Dataset on a packed file: image paths from coco_url, every category of the file a class."""

    VARIANT = "lvis"


@scope_registry(DATASETS).register_module(name="PackedCocoDataset")
class PackedCocoDataset(_Packed, CocoDataset):
    """CocoDataset on a packed file: the categories named in metainfo.classes, in the file's order."""

    VARIANT = "coco"


@scope_registry(DATASETS).register_module(name="ClassBalancedDataset")
class ClassBalancedDataset(MMEngineClassBalancedDataset):
    """mmengine's repeat-factor sampling; on a packed dataset the factors come from its label arrays
    (the same float operations, tested equal), the indices kept as one numpy array."""

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        if not isinstance(self.dataset, _Packed):
            super().full_init()
            return
        self.dataset.full_init()
        factors = packed.repeat_factors(self.dataset.arrays, self.dataset.image_index, self.oversample_thr)
        self.repeat_indices = packed.repeat_indices(factors)
        self._fully_initialized = True

    def _get_ori_dataset_idx(self, idx: int) -> int:
        self.full_init()
        return int(self.repeat_indices[idx])
