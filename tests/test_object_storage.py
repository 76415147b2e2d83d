"""Shard sets on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1, read through fsspec."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

s3fs = pytest.importorskip("s3fs")

from s3_server import start_s3_server  # noqa: E402
from synground.data import IncompleteShardSet, resolve_shards  # noqa: E402
from synground.data.shards import iterate_shard  # noqa: E402
from synground.generation import ShapesGenerator  # noqa: E402
from synground.generation.writing import generate_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server, endpoint = start_s3_server()
    yield endpoint
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """What a user sets for any S3-compatible store: botocore reads the endpoint from AWS_ENDPOINT_URL."""
    settings = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return settings


def upload_shard_set(tmp_path, bucket: str, samples: int = 12) -> tuple[Path, s3fs.S3FileSystem]:
    local = tmp_path / "local"
    generate_shards(ShapesGenerator("clean", image_size=64), local, num_samples=samples, samples_per_shard=4, name="shapes")
    fs = s3fs.S3FileSystem()
    fs.call_s3("create_bucket", Bucket=bucket)  # fs.mkdir sends a location constraint moto refuses
    for path in sorted(local.glob("*.tar")) + [local / "manifest.json"]:
        fs.put(str(path), f"{bucket}/set/{path.name}")
    return local, fs


def read_keys(urls: list[str]) -> list[str]:
    issues = Counter()
    keys = [sample.key for url in urls for sample in iterate_shard(url, issues)]
    assert not issues, issues
    return keys


def test_a_shard_set_on_s3_reads_as_its_local_copy(s3_env, tmp_path):
    local, fs = upload_shard_set(tmp_path, "bucket-a")
    urls = resolve_shards("s3://bucket-a/set")
    assert urls == [f"s3://bucket-a/set/shapes-{i:06d}.tar" for i in range(3)]
    assert read_keys(urls) == read_keys(resolve_shards(str(local)))
    assert resolve_shards("s3://bucket-a/set/manifest.json") == urls
    assert resolve_shards("s3://bucket-a/set/shapes-{000000..000001}.tar") == urls[:2]
    assert resolve_shards("s3://bucket-a/set/*.tar") == urls
    # the same objects over plain HTTP (path-style URLs of public objects), and through a pipe command
    for name in fs.ls("bucket-a/set"):
        fs.chmod(name, acl="public-read")
    http = resolve_shards(f"{s3_env['AWS_ENDPOINT_URL']}/bucket-a/set")
    assert read_keys(http) == read_keys(urls)
    assert read_keys(resolve_shards(f"pipe:cat {local}/shapes-000000.tar")) == read_keys(urls[:1])


def test_an_unfinished_or_missing_remote_set_is_refused_by_name(s3_env, tmp_path):
    local, fs = upload_shard_set(tmp_path, "bucket-b")
    manifest = json.loads((local / "manifest.json").read_text())
    manifest["complete"], manifest["command"] = False, "python generate.py generation=shapes output_dir=s3://bucket-b/set"
    fs.pipe("bucket-b/set/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IncompleteShardSet, match=r"s3://bucket-b/set is an unfinished shard set.*output_dir=s3://bucket-b/set"):
        resolve_shards("s3://bucket-b/set")
    assert len(resolve_shards("s3://bucket-b/set", allow_partial=True)) == 3
    with pytest.raises(FileNotFoundError, match="no manifest.json at s3://bucket-b/elsewhere"):
        resolve_shards("s3://bucket-b/elsewhere")
    issues = Counter()
    assert list(iterate_shard("s3://bucket-b/set/gone.tar", issues)) == [] and issues == {"corrupt_shard": 1}


def test_train_py_trains_and_evaluates_from_s3(s3_env, tmp_path):
    upload_shard_set(tmp_path, "bucket-c", samples=16)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=shards", "data.image_size=64", "data.mask_size=32",
         "data.train.real=[s3://bucket-c/set]", "+data.val.remote=s3://bucket-c/set", "+data.test.remote=s3://bucket-c/set",
         "data.batch_size=4", "data.batches_per_epoch=2", "data.num_workers=1", "data.pin_memory=false", "trainer.max_epochs=1",
         "model.net.image_size=64", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env={**os.environ, **s3_env})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/global_step"] == 2 and metrics["test/items/remote"] > 16  # every phrase of the 16 scenes
    kept = json.loads((tmp_path / "run" / "data_manifests" / "0-real-set.json").read_text())  # the run's lineage
    assert kept == json.loads((tmp_path / "local" / "manifest.json").read_text())
