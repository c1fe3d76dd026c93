"""Wire codec throughput: encode/decode a model-sized message, print one JSON line.

Usage: python benchmarks/wire_codec.py [--model-mb 100] [--repeats 5]

Decoding is zero-copy (tensors are views over the frame), so decode time should not grow
with the model size; encoding copies each tensor once into the frame.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from fedloom.wire import Message, MessageType, decode, encode


def model_message(model_mb: int, layers: int = 16) -> Message:
    per_layer = model_mb * (1 << 20) // 4 // layers
    rng = np.random.default_rng(0)
    tensors = {
        f"layer{i}.weight": rng.standard_normal(per_layer, dtype=np.float32) for i in range(layers)
    }
    return Message(
        MessageType.TRAINING_UPDATE,
        "pod",
        "modeller",
        "task",
        body={"round": 0, "num_samples": 1000},
        tensors=tensors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    message = model_message(args.model_mb)
    encode_s, decode_s = [], []
    frame = b""
    for _ in range(args.repeats):
        started = time.perf_counter()
        frame = encode(message)
        encode_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        decoded = decode(frame)
        decode_s.append(time.perf_counter() - started)
        assert decoded.tensors.keys() == message.tensors.keys()
    megabytes = len(frame) / (1 << 20)
    print(
        json.dumps(
            {
                "benchmark": "wire_codec",
                "model_mb": args.model_mb,
                "frame_mb": round(megabytes, 2),
                "encode_s": round(statistics.median(encode_s), 4),
                "decode_s": round(statistics.median(decode_s), 6),
                "encode_mb_s": round(megabytes / statistics.median(encode_s), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
