"""Whether a shard set's files are the ones its manifest lists: every shard present, of the listed size and sha256.

    synground-verify-shards data/visual_genome data/flickr30k-test

Reading checks less, on every pass: a local shard's size when it is opened and its sample count once it is read (see
`iterate_shard`). The sha256 reads every shard once more, so it is checked here, on demand, and when a conversion or
generation resumes (on the shards it keeps). Exits with 1 when a shard differs, naming each and what differs.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from synground.data.shards import listed_shards, shard_difference


def verify_set(spec: str) -> dict[str, str]:
    """{shard: what differs} for the shards of a set (finished or not) that are not as its manifest lists."""
    differences = {}
    for url, entry in tqdm(listed_shards(spec, allow_partial=True).items(), desc=f"verifying {spec}", unit="shard"):
        difference = shard_difference(url, entry)
        if difference is not None:
            differences[url] = difference
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check shard sets against their manifests (size and sha256 of every shard).")
    parser.add_argument("sets", nargs="+", help="shard set directories, manifests or object-store prefixes")
    args = parser.parse_args(argv)
    failed = False
    for spec in args.sets:
        differences = verify_set(spec)
        for url, difference in differences.items():
            print(f"{url}: {difference}")
        print(f"{spec}: {'every shard as listed' if not differences else f'{len(differences)} shards not as listed'}")
        failed |= bool(differences)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
