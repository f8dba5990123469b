#!/usr/bin/env python3
"""Reference data for webmoe's block formats, from the `gguf` package (PyPI), which
implements ggml's reference quantizers bit for bit. Writes, per format, to
tests/fixtures/quants/<format>.bin (little endian):

    u32 n_values, f32[n] input values,
    u32 n_bytes,  u8[n_bytes] gguf.quants.quantize(input),
    f32[n] gguf.quants.dequantize(those bytes),
    u32 n_raw,    u8[n_raw] random raw blocks (finite f16 scales),
    f32[...] gguf.quants.dequantize(raw blocks)

Inputs mix scales, exact ties at .5 after scaling, zeros and all-zero blocks. The
gguf package has no K-quant quantizer: Q4_K's quantized bytes come from ggml's own C
`quantize_row_q4_K_ref`, called through ctypes in libggml-base.so of a llama.cpp build
(--ggml-lib; llama-cpp-python's sdist vendors the source). Q5_K, Q6_K, Q4_1, Q5_0 and Q5_1
have raw blocks only (n_values = n_bytes = 0): webmoe decodes them (llama.cpp's files
use them) but does not quantize to them. Raw blocks get finite f16 scales; MXFP4's
scale bytes stay in a finite range.
    pip install gguf numpy
    python3 scripts/gen_quant_fixtures.py --ggml-lib .../build/bin/libggml-base.so
"""
import argparse
import ctypes
import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quants"
rng = np.random.default_rng(20261128)


def values(blocks):
    v = rng.normal(0, 1, (blocks, 32)).astype(np.float32)
    v *= np.float32(10.0) ** rng.integers(-4, 3, (blocks, 1)).astype(np.float32)
    v[0] = 0.0                                           # an all-zero block
    v[1, :] = np.arange(32, dtype=np.float32) - 15.5     # halves after scaling
    v[2, 5] = -v[2].__abs__().max() * 2                  # a negative maximum
    v[3, :16] = 0.0
    return v.reshape(-1)


def f16s(blocks):
    return rng.normal(0, 0.01, blocks).astype(np.float16).view(np.uint8).reshape(blocks, 2)


def raw_blocks(fmt, blocks):
    size = quants.GGML_QUANT_SIZES[fmt][1]
    raw = rng.integers(0, 256, (blocks, size), dtype=np.uint8)
    if fmt in (T.Q8_0, T.Q4_0, T.Q5_0):
        raw[:, :2] = f16s(blocks)
    elif fmt in (T.Q4_1, T.Q5_1):
        raw[:, 0:2] = f16s(blocks)  # d
        raw[:, 2:4] = f16s(blocks)  # m
    elif fmt in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = f16s(blocks)  # d
        raw[:, 2:4] = f16s(blocks)  # dmin
    elif fmt == T.Q6_K:
        raw[:, 208:210] = f16s(blocks)  # d
    elif fmt == T.MXFP4:
        raw[:, 0] = rng.integers(100, 150, blocks)  # e8m0 scale
    return raw.reshape(-1)


ap = argparse.ArgumentParser()
ap.add_argument("--ggml-lib", required=True, help="libggml-base.so of a llama.cpp build")
ggml = ctypes.CDLL(ap.parse_args().ggml_lib)
ggml.quantize_row_q4_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]


def ggml_q4_k(x):
    out = np.zeros(x.size // 256 * 144, np.uint8)
    ggml.quantize_row_q4_K_ref(x.ctypes.data, out.ctypes.data, x.size)
    return out


for name, fmt in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_k", T.Q4_K), ("q5_k", T.Q5_K),
                  ("q6_k", T.Q6_K), ("mxfp4", T.MXFP4), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0),
                  ("q5_1", T.Q5_1)]:
    if fmt in (T.Q8_0, T.Q4_0, T.MXFP4):
        x = values(64)
        q = quants.quantize(x.reshape(-1, 32 * 4), fmt).reshape(-1)
        dq = quants.dequantize(q, fmt).astype(np.float32).reshape(-1)
    elif fmt == T.Q4_K:
        x = np.ascontiguousarray(values(64))
        q = ggml_q4_k(x)
        dq = quants.dequantize(q, fmt).astype(np.float32).reshape(-1)
    else:
        x = np.zeros(0, np.float32)
        q = np.zeros(0, np.uint8)
        dq = np.zeros(0, np.float32)
    raw = raw_blocks(fmt, 64 if quants.GGML_QUANT_SIZES[fmt][0] == 32 else 16)
    raw_dq = quants.dequantize(raw, fmt).astype(np.float32).reshape(-1)
    with open(OUT / f"{name}.bin", "wb") as f:
        f.write(struct.pack("<I", x.size)); f.write(x.tobytes())
        f.write(struct.pack("<I", q.size)); f.write(q.tobytes())
        f.write(dq.tobytes())
        f.write(struct.pack("<I", raw.size)); f.write(raw.tobytes())
        f.write(raw_dq.tobytes())
    print(name, x.size, "values,", q.size, "bytes")
