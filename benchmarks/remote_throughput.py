"""Reading a shard set from an S3-compatible server against reading the same shards from local disk.

    python benchmarks/remote_throughput.py        (writes benchmarks/results/remote_throughput.{json,md})

moto's S3 server runs on 127.0.0.1 (the tests use it too); the same 400 photo-like images (640x480 JPEG, 4 shards)
are read through GroundingDataModule's training stream at 384 px from `data/` on disk and from `s3://`, with no
data-loading worker (every read waits for the network), with 1 (the loader prefetches while the model would
compute) and with 2 (both cores decode), interleaved, best of 3 passes. The server shares this machine's 2 cores with the readers:
a real object store would not take CPU from them, so the remote numbers here are a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the S3 server the tests start

from data_throughput import write_shards  # noqa: E402
from support.s3_server import start_s3_server  # noqa: E402
from synground.files import write_atomic  # noqa: E402


def read_stream(source: str, images: int, workers: int) -> int:
    from synground.data import GroundingDataModule

    datamodule = GroundingDataModule(
        train={"real": source}, image_size=384, mask_size=256, batch_size=32, batches_per_epoch=images // 32, num_workers=workers
    )
    return sum(len(batch["texts"]) for batch in datamodule.train_dataloader())


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="It takes no options.").parse_args()
    images = 400
    server, endpoint = start_s3_server()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        import s3fs

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "set"
            write_shards(local, images)
            fs = s3fs.S3FileSystem()
            fs.call_s3("create_bucket", Bucket="bench")
            for path in sorted(local.iterdir()):
                fs.put(str(path), f"bench/set/{path.name}")
            sources = {"local disk": str(local), "s3 (moto on 127.0.0.1)": "s3://bench/set"}
            best: dict[tuple[str, int], float] = {}
            for _ in range(3):  # interleaved, so drifts in machine load hit every reader alike
                for workers in (0, 1, 2):
                    for name, source in sources.items():
                        start = time.perf_counter()
                        count = read_stream(source, images, workers)
                        seconds = time.perf_counter() - start
                        best[name, workers] = min(best.get((name, workers), float("inf")), seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)

    rows = []
    for workers in (0, 1, 2):
        local_rate = count / best["local disk", workers]
        for name in sources:
            rate = count / best[name, workers]
            rows.append(
                {"source": name, "workers": workers, "images_per_second": round(rate, 1), "of_local": round(rate / local_rate, 3)}
            )
    lines = ["| source | data-loading workers | images/s | of local disk |", "|---|---|---|---|"]
    lines += [f"| {r['source']} | {r['workers']} | {r['images_per_second']:.1f} | {r['of_local']:.0%} |" for r in rows]
    report = "\n".join(lines)
    print(report)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "remote_throughput.json", json.dumps({"machine": machine, "images": images, "rows": rows}, indent=2))
    write_atomic(RESULTS / "remote_throughput.md", f"# Remote vs local shard reading ({machine})\n\n{report}\n")


if __name__ == "__main__":
    main()
