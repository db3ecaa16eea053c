"""numpy arrays, scalars and masked arrays by value: the NDARRAY and MASKED layouts of
``values.py`` (which describes them), and the checked dtype parser that decoding relies on."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import Any

MAX_NDIM = 32
MAX_FIELDS = 4096
MAX_DTYPE_DEPTH = 8
MAX_ITEMSIZE = 2**31 - 1
MAX_SUBARRAY = 2**24
MAX_NAME = 1024

_SIMPLE_DTYPE = re.compile(
    r"[<>|=]([biufcSUV])([1-9]\d{0,9})"
    r"|[<>|=]([mM])8(\[(?:[1-9]\d{0,8})?(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?")

Put = Callable[[memoryview], Any]  # places a buffer, returns what stands for it in fields
Take = Callable[[Any], Any]  # the bytes of a buffer field


class MissingLibrary(TypeError):
    """The peer sent a value this side cannot rebuild (numpy or pandas missing or too old)."""



def is_numpy(obj: Any) -> bool:
    """True for numpy arrays and scalars, without importing numpy when it is not loaded."""
    module = type(obj).__module__
    if not module.startswith("numpy") or "numpy" not in sys.modules:
        return False
    import numpy

    return isinstance(obj, (numpy.ndarray, numpy.generic))



def encode_numpy(obj: Any, put: Put) -> tuple[str, tuple]:
    """("ndarray" or "masked", fields) of a numpy array, scalar or masked array."""
    import numpy

    cls = type(obj)
    if isinstance(obj, numpy.ma.MaskedArray):
        if cls is numpy.ma.core.MaskedConstant:
            return "masked", ("constant",)
        if cls is not numpy.ma.MaskedArray:
            raise TypeError(f"cannot copy a {qualname(cls)} (a masked array subclass) by value")
        return "masked", encode_masked(obj, put)
    if isinstance(obj, numpy.generic):
        return "ndarray", array_fields(numpy.asarray(obj), put, scalar=True)
    if cls not in (numpy.ndarray, numpy.recarray, numpy.memmap):
        raise TypeError(f"cannot copy a {qualname(cls)} (an ndarray subclass) by value; "
                        f"numpy.asarray() it first if the plain array is what you want")
    return "ndarray", array_fields(obj, put, scalar=False)


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def dtype_description(dtype: Any, what: str = "array") -> Any:
    """The wire description of a numpy dtype (see the module docstring)."""
    import numpy

    if dtype.fields is None:
        if dtype.subdtype is not None:
            base, shape = dtype.subdtype
            return ("sub", dtype_description(base, what), tuple(int(n) for n in shape))
        if dtype.hasobject or dtype.kind == "O":
            raise TypeError(f"cannot copy {what} of dtype {dtype} by value: object arrays "
                            f"hold references, not data")
        if dtype.itemsize == 0:
            raise TypeError(f"cannot copy {what} of dtype {dtype} by value (zero item size)")
        return dtype.str
    fields = []
    for name in dtype.names:
        info = dtype.fields[name]
        title = info[2] if len(info) > 2 else None
        if title is not None and not isinstance(title, str):
            raise TypeError(f"cannot copy {what}: field {name!r} has a non-string title")
        fields.append((name, title, dtype_description(info[0], f"{what} field {name!r}"),
                       int(info[1])))
    if dtype.hasobject:
        raise TypeError(f"cannot copy {what} of dtype {dtype} by value: it has object fields")
    return ("struct", int(dtype.itemsize), bool(dtype.isalignedstruct),
            dtype.type is numpy.record, tuple(fields))


def array_fields(array: Any, put: Put, scalar: bool, what: str = "an array") -> tuple:
    import numpy

    if type(array) is not numpy.ndarray:
        array = array.view(numpy.ndarray)
    dtype = array.dtype
    description = dtype_description(dtype, what)
    if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
        order, flat = "F", array.T.reshape(-1)  # the transpose is C-contiguous: no copy
    elif array.flags.c_contiguous:
        order, flat = "C", array.reshape(-1)
    else:
        # A strided view is copied here; that copy is private (nobody else can write to
        # it), so it is marked read-only and a snapshot does not copy it again.
        order, flat = "C", numpy.ascontiguousarray(array).reshape(-1)
        flat.flags.writeable = False
    raw = memoryview(flat.view(numpy.uint8)) if flat.size else memoryview(b"")
    return (description, tuple(int(n) for n in array.shape), scalar, put(raw), order)


def encode_masked(obj: Any, put: Put) -> tuple:
    import numpy

    data = numpy.ma.getdata(obj)
    mask = numpy.ma.getmask(obj)
    mask_fields = None if mask is numpy.ma.nomask else \
        array_fields(numpy.asarray(mask), put, False, "a mask")
    fill = numpy.asarray(obj.fill_value, dtype=data.dtype) if data.dtype.fields is None \
        else numpy.asarray(obj.fill_value)
    return (array_fields(data, put, False), mask_fields, array_fields(fill, put, True),
            bool(obj.hardmask))


def numpy_module() -> Any:
    try:
        import numpy
    except ImportError:
        raise MissingLibrary("the peer sent a numpy array; install numpy here to copy it "
                             "(pip install numpy)") from None
    return numpy


def dtype_from_description(description: Any, depth: int = 0) -> Any:
    """A numpy dtype built from a wire description, checked field by field."""
    numpy = numpy_module()
    if type(description) is str:
        if _SIMPLE_DTYPE.fullmatch(description) is None:
            raise ValueError(f"dtype {description[:40]!r} is not an allowed simple dtype")
        dtype = numpy.dtype(description)
        if dtype.hasobject or dtype.itemsize == 0 or dtype.fields is not None:
            raise ValueError(f"dtype {description!r} is not allowed")
        return dtype
    if depth >= MAX_DTYPE_DEPTH:
        raise ValueError("dtype nested too deeply")
    if type(description) is not tuple or len(description) != 5 or description[0] != "struct":
        raise ValueError("malformed structured dtype")
    _, itemsize, aligned, record, fields = description
    if type(itemsize) is not int or not 1 <= itemsize <= MAX_ITEMSIZE \
            or type(aligned) is not bool or type(record) is not bool \
            or type(fields) is not tuple or not 1 <= len(fields) <= MAX_FIELDS:
        raise ValueError("malformed structured dtype")
    names, formats, offsets, titles = [], [], [], []
    for field in fields:
        if type(field) is not tuple or len(field) != 4:
            raise ValueError("malformed structured dtype field")
        name, title, form, offset = field
        if type(name) is not str or not 0 < len(name) <= MAX_NAME \
                or not (title is None or (type(title) is str and 0 < len(title) <= MAX_NAME)) \
                or type(offset) is not int or offset < 0:
            raise ValueError("malformed structured dtype field")
        field_dtype = _field_dtype(form, depth + 1)
        if offset + field_dtype.itemsize > itemsize:
            raise ValueError(f"field {name!r} lies outside the item")
        names.append(name)
        formats.append(field_dtype)
        offsets.append(offset)
        titles.append(title)
    spec: dict[str, Any] = {"names": names, "formats": formats, "offsets": offsets,
                            "itemsize": itemsize}
    if any(title is not None for title in titles):
        spec["titles"] = titles
    dtype = numpy.dtype(spec, align=aligned)
    if record:
        dtype = numpy.dtype((numpy.record, dtype))
    if dtype.hasobject or dtype.itemsize != itemsize:
        raise ValueError("structured dtype does not match its description")
    return dtype


def _field_dtype(form: Any, depth: int) -> Any:
    if type(form) is tuple and len(form) == 3 and form[0] == "sub":
        _, base, shape = form
        shape = checked_shape(shape)
        if not shape or math.prod(shape) > MAX_SUBARRAY:
            raise ValueError("malformed subarray dtype")
        numpy = numpy_module()
        return numpy.dtype((dtype_from_description(base, depth), shape))
    return dtype_from_description(form, depth)


def checked_shape(shape: Any) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > MAX_NDIM \
            or not all(type(n) is int and 0 <= n < 2**63 for n in shape):
        raise ValueError("malformed shape")
    return shape


def array_from(fields: tuple, take: Take, scalar_ok: bool = True) -> Any:
    if len(fields) not in (4, 5):
        raise ValueError("malformed array")
    description, shape, scalar, body = fields[:4]
    order = fields[4] if len(fields) == 5 else "C"
    if type(scalar) is not bool or order not in ("C", "F") or (scalar and not scalar_ok):
        raise ValueError("malformed array")
    shape = checked_shape(shape)
    if scalar and shape:
        raise ValueError("a scalar has no shape")
    numpy = numpy_module()
    dtype = dtype_from_description(description)
    raw = take(body)
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise ValueError(f"{len(raw)} bytes cannot hold {count} items of {dtype}")
    if memoryview(raw).readonly:
        raw = bytearray(raw)  # writable, not a view of the message (and padding kept)
    array = numpy.frombuffer(raw, dtype=dtype, count=count).reshape(shape, order=order)
    if scalar:
        return array[()]
    if dtype.type is numpy.record:
        array = array.view(numpy.recarray)
    return array


def masked_from(fields: tuple, take: Take) -> Any:
    numpy = numpy_module()
    if fields == ("constant",):
        return numpy.ma.masked
    if len(fields) != 4:
        raise ValueError("malformed masked array")
    data_fields, mask_fields, fill_fields, hard = fields
    if type(data_fields) is not tuple or type(fill_fields) is not tuple \
            or type(hard) is not bool:
        raise ValueError("malformed masked array")
    data = array_from(data_fields, take, scalar_ok=False)
    if type(data) is not numpy.ndarray:
        data = data.view(numpy.ndarray)
    mask: Any = numpy.ma.nomask
    if mask_fields is not None:
        if type(mask_fields) is not tuple:
            raise ValueError("malformed mask")
        mask = array_from(mask_fields, take, scalar_ok=False)
        if mask.shape != data.shape or mask.dtype != numpy.ma.make_mask_descr(data.dtype):
            raise ValueError("the mask does not fit the data")
    fill = array_from(fill_fields, take)
    result = numpy.ma.MaskedArray(data, mask=mask, copy=False, shrink=False, hard_mask=hard)
    result.fill_value = fill
    return result
