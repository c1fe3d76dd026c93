"""Fuzzing ``fedloom.wire.decode``: every input decodes or raises WireError, nothing else."""

from __future__ import annotations

import random
import re
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from fedloom.errors import WireError
from fedloom.wire import ALLOWED_DTYPES, Message, MessageType, decode, encode

ITERATIONS = 100_000
SEED = 20240611
PREFIX = struct.Struct("<3sBIQ")

INTERESTING_INTS = [
    0, 1, -1, 2, 7, 63, 64, 65, 127, 128, 255, 256, 4096,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
    -(2**31), -(2**63),
]  # fmt: skip
INTERESTING_VALUES: list[Any] = [
    *INTERESTING_INTS,
    None, True, False, 0.0, -0.5, 1e308, float("nan"), float("inf"), -float("inf"),
    "", "a", "x" * 300, "|b1", "<f4", "|O", ">f8", "<f16", "HEARTBEAT", "heartbeat",
    b"", b"\x00\xff", [], [0], [1, 2], [-1], [2**40, 2**40], [0, 2**63], {}, {"a": 1}, [[[]]],
]  # fmt: skip


def build(
    raw_header: bytes, blob: bytes, header_len: int | None = None, blob_len: int | None = None
) -> bytes:
    prefix = PREFIX.pack(
        b"FLM",
        1,
        len(raw_header) if header_len is None else header_len,
        len(blob) if blob_len is None else blob_len,
    )
    return prefix + raw_header + bytes(-(16 + len(raw_header)) % 64) + blob


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.15:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 4 and roll < 0.25:
        return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if roll < 0.6:
        return rng.choice(INTERESTING_VALUES)
    if roll < 0.8:
        return rng.randrange(-(2**63), 2**64)
    return rng.randbytes(rng.randrange(8))


def random_key(rng: random.Random) -> Any:
    return rng.choice(["type", "name", "shape", "k", "", "body", "tensors"])


def random_array(rng: random.Random) -> np.ndarray[Any, Any]:
    dtype = np.dtype(rng.choice(sorted(ALLOWED_DTYPES)))
    shape = tuple(rng.randrange(4) for _ in range(rng.randrange(4)))
    data = np.random.default_rng(rng.randrange(2**32)).integers(0, 2, size=shape)
    return data.astype(dtype)


def corpus(rng: random.Random) -> list[bytes]:
    frames = []
    for index in range(40):
        tensors = {f"t{i}": random_array(rng) for i in range(rng.randrange(5))}
        if index % 4 == 0:
            tensors["mask"] = np.ones(rng.randint(1, 90), dtype=np.bool_)
        message = Message(
            type=rng.choice(list(MessageType)),
            sender=f"pod-{index}",
            recipient="modeller",
            task_id=f"task-{rng.randrange(100)}",
            sequence=rng.randrange(2**20),
            timestamp=rng.random() * 1e9,
            body={"i": index, "v": [1.5, "x", b"y", None, True], "m": {"n": {"o": []}}},
            tensors=tensors,
        )
        frames.append(encode(message))
    return frames


def split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    _, _, header_len, blob_len = PREFIX.unpack_from(frame)
    return msgpack.unpackb(frame[16 : 16 + header_len]), frame[len(frame) - blob_len :]


# --- mutators: each returns one input to decode -------------------------------------------


def flip_bits(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def flip_early_bits(rng: random.Random, frame: bytes) -> bytes:
    """Flips in the prefix and header, where the structure is."""
    data = bytearray(frame)
    _, _, header_len, _ = PREFIX.unpack_from(frame)
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(16 + header_len)] ^= 1 << rng.randrange(8)
    return bytes(data)


def overwrite_bytes(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice([0, 0xFF, 0x7F, 0x80, 0xC1, rng.randrange(256)])
    return bytes(data)


def truncate(rng: random.Random, frame: bytes) -> bytes:
    return frame[: rng.randrange(len(frame))]


def extend(rng: random.Random, frame: bytes) -> bytes:
    return frame + rng.randbytes(rng.randint(1, 64))


def splice(rng: random.Random, frame: bytes, other: bytes) -> bytes:
    return frame[: rng.randrange(len(frame) + 1)] + other[rng.randrange(len(other) + 1) :]


def random_bytes(rng: random.Random) -> bytes:
    head = b"FLM\x01" if rng.random() < 0.5 else b""
    return head + rng.randbytes(rng.randrange(200))


def random_header(rng: random.Random) -> bytes:
    """A valid prefix around a random msgpack value and a random blob."""
    raw = msgpack.packb(random_value(rng), use_bin_type=True)
    return build(raw, rng.randbytes(rng.choice([0, 8, 64, 100])))


def random_header_map(rng: random.Random, frame: bytes) -> bytes:
    """A real header with one field, or one tensor table field, replaced by a random value."""
    header, blob = split(frame)
    table = header["tensors"]
    if table and rng.random() < 0.6:
        entry = rng.choice(table)
        entry[rng.choice(["name", "dtype", "shape", "offset", "nbytes"])] = random_value(rng)
        if rng.random() < 0.3:
            entry.pop(rng.choice(list(entry)))
    elif rng.random() < 0.1:
        body: Any = rng.choice([None, {"k": 1}])
        for _ in range(rng.choice([63, 64, 65, 300])):
            body = [body]
        header["body"] = body
    else:
        header[rng.choice(list(header))] = random_value(rng)
    return build(msgpack.packb(header, use_bin_type=True), blob)


def shift_tensor(rng: random.Random, frame: bytes) -> bytes:
    """A plausible lie: an offset, shape or nbytes moved by a small or aligned amount."""
    header, blob = split(frame)
    if not header["tensors"]:
        return frame
    entry = rng.choice(header["tensors"])
    field = rng.choice(["offset", "nbytes", "shape"])
    delta = rng.choice([-64, -1, 1, 8, 64, 128])
    if field == "shape" and entry["shape"]:
        axis = rng.randrange(len(entry["shape"]))
        entry["shape"][axis] = max(0, entry["shape"][axis] + rng.choice([-1, 1, 2]))
    elif field != "shape":
        entry[field] = max(0, entry[field] + delta)
    if rng.random() < 0.5:  # keep nbytes consistent with the new shape
        count = int(np.prod(entry["shape"], dtype=object)) if entry["shape"] else 1
        entry["nbytes"] = count * np.dtype(entry["dtype"]).itemsize
    if rng.random() < 0.5:
        blob += bytes(rng.choice([0, 8, 64]))
    return build(msgpack.packb(header, use_bin_type=True), blob)


def lying_prefix(rng: random.Random, frame: bytes) -> bytes:
    _, _, header_len, blob_len = PREFIX.unpack_from(frame)
    raw = frame[16 : 16 + header_len]
    blob = frame[len(frame) - blob_len :]
    if rng.random() < 0.5:
        return build(raw, blob, header_len=rng.choice(INTERESTING_INTS[:18]) % 2**32)
    return build(raw, blob, blob_len=rng.choice(INTERESTING_INTS[:22]) % 2**64)


MSGPACK_TOKENS = [
    b"\xc0", b"\xc2", b"\xc3", b"\x00", b"\x7f", b"\xff", b"\xcc\xff", b"\xcf" + b"\xff" * 8,
    b"\xd3\x80" + b"\x00" * 7, b"\xcb" + struct.pack(">d", float("nan")), b"\xa1a", b"\xa4type",
    b"\xd9\x05hello", b"\xc4\x02ab", b"\x91", b"\x92", b"\x9f", b"\xdc\xff\xff",
    b"\xdd\xff\xff\xff\xff", b"\x81", b"\x8f", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\xd4\x05x", b"\xd6\xff\x00\x00\x00\x00", b"\xc7\x00\xff", b"\xc7\x00\x01", b"\xc1",
    b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff",
]  # fmt: skip


def msgpack_tokens(rng: random.Random) -> bytes:
    """A header made of raw msgpack tokens: deep nesting, lying lengths, ext types."""
    tokens = [rng.choice(MSGPACK_TOKENS) for _ in range(rng.randrange(1, 30))]
    if rng.random() < 0.2:
        tokens.insert(0, b"\x91" * rng.choice([64, 1000, 2000, 50_000]))
    return build(b"".join(tokens), rng.randbytes(rng.choice([0, 64])))


def normalise(text: str) -> str:
    return re.sub(r"'[^']*'|\"[^\"]*\"|-?\d+|\[[^\]]*\]", "_", text)


EXPECTED_REFUSALS = [  # fragments of WireError messages from every layer of the decoder
    "frame prefix is",
    "wrong magic",
    "wire format version",
    "above the",
    "truncated",
    "trailing bytes",
    "non-zero padding after the header",
    "not valid msgpack (StackError)",
    "extension type",
    "duplicate map key",
    "must be a map",
    "header fields",
    "unknown message type",
    "sequence must be",
    "timestamp must be finite",
    "deeper than",
    "tensor table must be a list",
    "duplicate tensor name",
    "may not travel",
    "dimensions must be non-negative",
    "too large for numpy",
    "does not match shape",
    "not _-byte aligned",
    "runs past the end",
    "overlaps",
    "unused bytes",
    "non-zero padding before tensor",
    "tensors end at",
    "bool tensor",
]


@pytest.mark.slow
def test_decode_fuzz() -> None:
    rng = random.Random(SEED)
    frames = corpus(rng)
    on_frame: list[Callable[[random.Random, bytes], bytes]] = [
        flip_bits,
        flip_early_bits,
        overwrite_bytes,
        truncate,
        extend,
        random_header_map,
        random_header_map,
        shift_tensor,
        shift_tensor,
        lying_prefix,
    ]
    on_nothing: list[Callable[[random.Random], bytes]] = [
        random_bytes,
        random_header,
        msgpack_tokens,
    ]
    decoded = refused = 0
    reasons: set[str] = set()
    started = time.perf_counter()
    for iteration in range(ITERATIONS):
        frame = rng.choice(frames)
        roll = rng.randrange(len(on_frame) + len(on_nothing) + 1)
        if roll < len(on_frame):
            data = on_frame[roll](rng, frame)
        elif roll < len(on_frame) + len(on_nothing):
            data = on_nothing[roll - len(on_frame)](rng)
        else:
            data = splice(rng, frame, rng.choice(frames))
        try:
            message = decode(data)
        except WireError as exc:
            refused += 1
            reasons.add(normalise(str(exc)))
            continue
        except Exception as exc:
            pytest.fail(
                f"iteration {iteration}: decode raised {type(exc).__name__}: {exc}\n"
                f"input ({len(data)} bytes): {data[:512].hex()}\n{traceback.format_exc()}"
            )
        decoded += 1
        assert decode(encode(message)) == message  # what decodes also re-encodes
    elapsed = time.perf_counter() - started
    print(f"fuzz: {ITERATIONS} inputs in {elapsed:.1f}s, {decoded} decoded, {refused} refused")
    assert decoded + refused == ITERATIONS
    assert decoded > 1_000  # mutations that stay valid prove the fuzzer is not all noise
    missed = [check for check in EXPECTED_REFUSALS if not any(check in r for r in reasons)]
    assert not missed, f"the fuzzer never reached these checks: {missed}"
