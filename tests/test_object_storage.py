"""Shard sets on object storage: a real S3-compatible server (moto's server mode) on 127.0.0.1, read through fsspec."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

s3fs = pytest.importorskip("s3fs")

from support import ROOT, run  # noqa: E402
from support.raw_datasets import write_visual_genome  # noqa: E402
from support.s3_server import start_s3_server  # noqa: E402
from support.shards import OddRejecter  # noqa: E402
from synground.data import IncompleteShardSet, resolve_shards  # noqa: E402
from synground.data.shards import iterate_shard  # noqa: E402
from synground.generation.report import dataset_report  # noqa: E402
from synground.generation.writing import generate_shards  # noqa: E402
from synground.shapes import ShapesGenerator  # noqa: E402

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def s3_endpoint():
    server, endpoint = start_s3_server()
    yield endpoint
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """What a user sets for any S3-compatible store: botocore reads the endpoint from AWS_ENDPOINT_URL."""
    settings = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    return settings


def make_bucket(name: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem()
    fs.call_s3("create_bucket", Bucket=name)  # fs.mkdir sends a location constraint moto refuses
    return fs


def upload_shard_set(tmp_path, bucket: str, samples: int = 12) -> tuple[Path, s3fs.S3FileSystem]:
    local = tmp_path / "local"
    generate_shards(ShapesGenerator("clean", image_size=64), local, num_samples=samples, samples_per_shard=4, name="shapes")
    fs = make_bucket(bucket)
    for path in [*sorted(local.glob("*.tar")), local / "manifest.json"]:
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
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json at s3://bucket-b/elsewhere"):
        resolve_shards("s3://bucket-b/elsewhere")
    issues = Counter()
    assert list(iterate_shard("s3://bucket-b/set/gone.tar", issues)) == [] and issues == {"corrupt_shard": 1}


def test_train_py_trains_and_evaluates_from_a_set_generated_on_s3(s3_env, tmp_path):
    fs = make_bucket("bucket-c")
    generate_shards(ShapesGenerator("clean", image_size=64), "s3://bucket-c/set", num_samples=16, samples_per_shard=4)
    result = run(
        "train.py",
        "data=shards",
        "data.image_size=64",
        "data.mask_size=32",
        "data.train.real=[s3://bucket-c/set]",
        "+data.val.remote=s3://bucket-c/set",
        "+data.test.remote=s3://bucket-c/set",
        "data.batch_size=4",
        "data.batches_per_epoch=2",
        "data.num_workers=1",
        "data.pin_memory=false",
        "trainer.max_epochs=1",
        "model.net.image_size=64",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
        env=s3_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/global_step"] == 2 and metrics["test/items/remote"] > 16  # every phrase of the 16 scenes
    kept = json.loads((tmp_path / "run" / "data_manifests" / "0-real-set.json").read_text())  # the run's lineage
    assert kept == json.loads(fs.cat("bucket-c/set/manifest.json")) and kept["complete"] is True


def start(script: str, output_dir: str, *overrides: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), f"output_dir={output_dir}", *overrides],
        cwd=ROOT,
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    s3fs.S3FileSystem().invalidate_cache()  # the listings this test's client cached are stale now


def kill_when(process: subprocess.Popen, condition, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and not condition():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def shard_list(manifest: dict) -> list[tuple[str, str, int]]:
    return [(e["name"], e["sha256"], e["samples"]) for e in manifest["shards"]]


def assert_only_whole_shards(fs: s3fs.S3FileSystem, prefix: str, whole: dict) -> list[str]:
    """Every shard object in the bucket is one the uninterrupted run wrote, byte for byte: none is half uploaded."""
    fs.invalidate_cache()
    expected = {e["name"]: e["sha256"] for e in whole["shards"]}
    objects = sorted(p.rpartition("/")[2] for p in fs.ls(prefix, detail=False) if p.endswith(".tar"))
    for name in objects:
        assert hashlib.sha256(fs.cat(f"{prefix}/{name}")).hexdigest() == expected[name], name
    return objects


def test_convert_py_writes_to_s3_and_a_killed_run_resumes_to_the_same_bytes(s3_env, tmp_path):
    fs = make_bucket("bucket-convert")
    write_visual_genome(tmp_path / "raw" / "visual_genome", count=240, regions_per_image=2, size=(320, 240))
    common = ["dataset=visual_genome", f"paths.data_dir={tmp_path}", "samples_per_shard=10", f"hydra.run.dir={tmp_path}/h"]
    finished(start("convert.py", str(tmp_path / "whole"), *common, env=s3_env))
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())

    remote = "s3://bucket-convert/vg"
    killed = start("convert.py", remote, *common, env=s3_env)

    def two_shards_listed() -> bool:
        fs.invalidate_cache()
        return (
            fs.exists("bucket-convert/vg/manifest.json")
            and len(json.loads(fs.cat("bucket-convert/vg/manifest.json"))["shards"]) >= 2
        )

    kill_when(killed, two_shards_listed)
    stopped = json.loads(fs.cat("bucket-convert/vg/manifest.json"))
    assert stopped["complete"] is False and 2 <= len(stopped["shards"]) < 24, "the kill should land mid-run"
    objects = assert_only_whole_shards(fs, "bucket-convert/vg", whole)
    assert set(objects) >= {e["name"] for e in stopped["shards"]}  # a shard is listed only once its object is whole
    with pytest.raises(
        IncompleteShardSet,
        match=(
            r"s3://bucket-convert/vg is an unfinished shard set"
            r".*convert\.py output_dir=s3://bucket-convert/vg dataset=visual_genome"
        ),
    ):
        resolve_shards(remote)

    finished(start("convert.py", remote, *common, env=s3_env))
    resumed = json.loads(fs.cat("bucket-convert/vg/manifest.json"))
    assert resumed["complete"] is True and resumed["totals"] == whole["totals"] and shard_list(resumed) == shard_list(whole)
    assert json.loads(fs.cat("bucket-convert/vg/conversion_report.json"))["samples"] == 240
    assert read_keys(resolve_shards(remote)) == read_keys(resolve_shards(str(tmp_path / "whole")))


def test_generate_py_writes_to_s3_and_a_killed_run_resumes_to_the_same_shards(s3_env, tmp_path):
    fs = make_bucket("bucket-generate")
    common = [
        "generation=shapes",
        "generation.generator.image_size=32",
        "generation.num_samples=400",
        "generation.samples_per_shard=5",
        "generation.chunk_size=5",
    ]
    finished(start("generate.py", str(tmp_path / "whole"), *common, "report=false", env=s3_env))
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())

    remote = "s3://bucket-generate/shapes"
    killed = start("generate.py", remote, *common, "report=false", env=s3_env)

    def two_entries() -> bool:
        fs.invalidate_cache()
        return fs.exists("bucket-generate/shapes/manifest.d") and len(fs.ls("bucket-generate/shapes/manifest.d")) >= 2

    kill_when(killed, two_entries)
    fs.invalidate_cache()
    entries = fs.ls("bucket-generate/shapes/manifest.d", detail=False)
    assert 2 <= len(entries) < 80, "the kill should land mid-run"
    objects = assert_only_whole_shards(fs, "bucket-generate/shapes", whole)
    assert set(objects) >= {path.rpartition("/")[2].removesuffix(".json") for path in entries}  # entry after its shard
    if fs.exists("bucket-generate/shapes/manifest.json"):  # merged after each shard: the kill may come first
        with pytest.raises(IncompleteShardSet, match=r"generate\.py output_dir=s3://bucket-generate/shapes generation=shapes"):
            resolve_shards(remote)

    finished(start("generate.py", remote, *common, env=s3_env))  # with the dataset report, written beside the shards
    resumed = json.loads(fs.cat("bucket-generate/shapes/manifest.json"))
    assert resumed["complete"] is True and resumed["totals"] == whole["totals"] and shard_list(resumed) == shard_list(whole)
    report = json.loads(fs.cat("bucket-generate/shapes/report/report.json"))
    assert report["samples"] == whole["totals"]["samples"] and fs.exists("bucket-generate/shapes/report/regions_per_image.png")
    assert len(report["sheets"]["samples"]) == 32 and fs.exists("bucket-generate/shapes/report/samples.png")
    assert read_keys(resolve_shards(remote)) == read_keys(resolve_shards(str(tmp_path / "whole")))


def test_rejected_candidates_are_kept_on_s3_and_drawn_from_there(s3_env, tmp_path):
    fs = make_bucket("bucket-rejected")
    generate_shards(OddRejecter(), "s3://bucket-rejected/set", num_samples=12, samples_per_shard=4, name="o", keep_rejected=2)
    fs.invalidate_cache()
    assert sorted(p.rpartition("/")[2] for p in fs.ls("bucket-rejected/set/rejected/odd_index", detail=False)) == [
        f"o-00000000{i}.{ext}" for i in (1, 3) for ext in ("jpg", "json")
    ]
    summary = dataset_report("s3://bucket-rejected/set", samples=2)
    assert summary["sheets"]["rejected"] == {"odd_index": ["o-000000001", "o-000000003"]}
    assert fs.exists("bucket-rejected/set/report/rejected_odd_index.png") and fs.exists("bucket-rejected/set/report/samples.png")


def test_writing_to_a_read_only_location_is_refused_before_any_work():
    from synground.data.shards import ShardStore

    for location in ("https://example.org/set", "pipe:cat x.tar"):
        with pytest.raises(ValueError, match=r"cannot write a shard set to .*read only"):
            ShardStore(location)
