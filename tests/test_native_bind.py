"""The ctypes side of the native kernels: what is derived once per array, and the checks that keep
the C code from reading arrays other than those it assumes."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from llmzip.native_bind import Pinned, address_of


def test_pinned_derives_once_per_array_and_forgets_it_with_the_array() -> None:
    seen: list[int] = []
    pinned = Pinned(lambda a: seen.append(a.size) or int(a.sum()))
    a = np.arange(6)
    assert pinned(a) == pinned(a) == 15 and seen == [6]
    view = a[:3]                                  # another array over the same memory: its own entry
    assert pinned(view) == 3 and seen == [6, 3]
    del a, view
    gc.collect()
    assert not pinned._held                       # nothing kept alive past its array


def test_pinned_derives_again_when_an_array_changes_shape_or_dtype() -> None:
    pinned = Pinned(lambda a: (a.shape, a.dtype.name))
    a = np.zeros(6, dtype=np.int64)
    assert pinned(a) == ((6,), "int64")
    a.shape = (2, 3)
    assert pinned(a) == ((2, 3), "int64")
    a.dtype = np.float64
    assert pinned(a) == ((2, 3), "float64")


@pytest.mark.parametrize("array, writeable", [(np.zeros((4, 4), np.int32)[:, ::2], False), (np.zeros(4, np.int64), False),
                                              (np.zeros(4, np.int32), True)])
def test_addresses_are_taken_only_of_the_arrays_the_c_code_assumes(array: Any, writeable: bool) -> None:
    if writeable:
        array.setflags(write=False)
    with pytest.raises(ValueError, match="unexpected dtype or layout"):
        address_of(np.int32, writeable=writeable)(array)
    good = np.zeros(4, np.int32)
    assert address_of(np.int32, writeable=True)(good) == good.ctypes.data
