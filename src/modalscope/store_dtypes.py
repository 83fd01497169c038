"""The dtypes the activation store can hold its reductions in, and bfloat16 made known to zarr.

Why three: float32 is exact; float16 halves the store and keeps 11 significant bits (rounding
by at most 4.9e-4 relative) but only the range +-65504, which a model's massive activations can pass
(a residual stream's outliers reach thousands in 7B models, and an MLP site's reduction can
go further); bfloat16 also halves the store and keeps float32's range (+-3.4e38), at 8 significant bits
(3.9e-3 relative: 8x float16's rounding). Which to take is a trade of range against
resolution: float16 by default, with its range checked before the first write (record/extract.py);
bfloat16 where that check keeps widening arrays to float32.

numpy has no bfloat16, so zarr-python has none of its own either; `ml_dtypes` (the numpy dtype
JAX and TensorFlow use) gives numpy one, and `BFloat16` below registers it with zarr's data-type
registry under the zarr v3 extension name "bfloat16" (zarr-developers/zarr-extensions,
data-types/bfloat16: 2 bytes, little endian, fill values as for the float types). zarr-python
opens such a store wherever this module has been imported (xarray too, through zarr-python);
without it zarr stops with "No Zarr data type found that matches 'bfloat16'". An entry point
(group "zarr.data_type") would spare readers the import, but zarr-python 3.1.6 collects those
and never loads them (checked: nothing calls the registry's `_lazy_load`), so none is declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import ml_dtypes
import numpy as np
from zarr.core.dtype.npy.float import BaseFloat
from zarr.dtype import data_type_registry

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True, kw_only=True)
class BFloat16(BaseFloat):  # type: ignore[type-arg]
    """zarr's float machinery (JSON fill values "NaN", casts, endianness) over ml_dtypes' bfloat16."""

    dtype_cls = type(BFLOAT16)
    _zarr_v3_name: ClassVar[str] = "bfloat16"
    _zarr_v2_names: ClassVar[tuple[str, ...]] = ("bfloat16",)

    @property
    def item_size(self) -> int:
        return 2


if BFloat16._zarr_v3_name not in data_type_registry.contents:
    data_type_registry.register(BFloat16._zarr_v3_name, BFloat16)

# name -> numpy dtype of the stored values
STORE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                                     "bfloat16": BFLOAT16}
NARROW = ("float16", "bfloat16")  # the dtypes whose range is checked before a write


def value_bytes(name: str) -> int:
    return STORE_DTYPES[name].itemsize


def largest(dtype: np.dtype) -> float:
    """The largest finite value of a stored dtype: beyond it a value would be stored as inf."""
    return float(ml_dtypes.finfo(dtype).max)


def choose(name: str) -> str:
    """One line naming the choices, for a bad --store-dtype."""
    if name not in STORE_DTYPES:
        names = list(STORE_DTYPES)
        raise ValueError(f"--store-dtype {name}: choose {', '.join(names[:-1])} or {names[-1]}")
    return name
