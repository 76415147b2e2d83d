"""Small copies of the real datasets in their exact upstream file formats, written by tests and benchmarks."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

from PIL import Image


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> None:
    """A JPEG of a few random rectangles: distinct seeds give structurally distinct pictures (distinct hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        image.paste(
            tuple(rng.randrange(256) for _ in range(3)),
            (x, y, x + rng.randrange(4, width // 2), y + rng.randrange(4, height // 2)),
        )
    image.save(path, quality=90)


def write_flickr30k(root: Path, ids: list[str], split: str = "test", size: tuple[int, int] = (64, 48)) -> None:
    """Each image: 2 sentences; phrase 1 has two boxes (any-box rule), phrase 2 one, phrase 3 none (nobndbox)."""
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for index, image_id in enumerate(ids):
        write_image(root / "flickr30k-images" / f"{image_id}.jpg", *size, seed=index)
        (root / "Sentences" / f"{image_id}.txt").write_text(
            "[/EN#1/people Two men] talk to [/EN#2/people a woman] in [/EN#3/scene the street] .\n"
            "[/EN#2/people A woman] listens .\n"
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(f"""<annotation>
  <filename>{image_id}.jpg</filename>
  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>
  <object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>1</name><name>2</name><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></object>
  <object><name>3</name><nobndbox>1</nobndbox></object>
</annotation>
""")


def write_refcoco(root: Path, images: dict[int, list[tuple[str, list[str]]]], size: tuple[int, int] = (64, 48)) -> None:
    """images: COCO id -> [(split, [sentences of one ref]), ...]; each ref's object box is xywh (8, 6, 20, 16).

    Laid out as the refer API's data folder: root/refcoco+/{refs(unc).p,instances.json}, root/images/mscoco/images/train2014.
    """
    refs, coco_images, annotations = [], [], []
    for image_id, image_refs in images.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_image(root / "images" / "mscoco" / "images" / "train2014" / name, *size, seed=image_id)
        coco_images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for split, sentences in image_refs:
            ann_id = len(annotations) + 1
            annotations.append(
                {"id": ann_id, "image_id": image_id, "bbox": [8.0, 6.0, 20.0, 16.0], "category_id": 1, "area": 320.0}
            )
            refs.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "ann_id": ann_id,
                    "ref_id": len(refs),
                    "category_id": 1,
                    "file_name": name,
                    "sent_ids": list(range(len(sentences))),
                    "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": i} for i, s in enumerate(sentences)],
                }
            )
    (root / "refcoco+").mkdir(parents=True, exist_ok=True)
    with open(root / "refcoco+" / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file, protocol=2)
    (root / "refcoco+" / "instances.json").write_text(
        json.dumps({"images": coco_images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]})
    )


def write_visual_genome(root: Path, count: int, regions_per_image: int = 3, size: tuple[int, int] = (64, 48)) -> None:
    """Images 1..count alternate between VG_100K and VG_100K_2; odd ids are also COCO images."""
    image_data, descriptions = [], []
    for image_id in range(1, count + 1):
        folder = "VG_100K" if image_id % 2 else "VG_100K_2"
        write_image(root / folder / f"{image_id}.jpg", *size, seed=image_id)
        image_data.append(
            {
                "image_id": image_id,
                "url": f"https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg",
                "width": size[0],
                "height": size[1],
                "coco_id": 1000 + image_id if image_id % 2 else None,
                "flickr_id": None,
            }
        )
        descriptions.append(
            {
                "id": image_id,
                "regions": [
                    {
                        "region_id": image_id * 100 + r,
                        "image_id": image_id,
                        "phrase": f"thing number {r}",
                        "x": 4 * r,
                        "y": 2 * r,
                        "width": 16,
                        "height": 12,
                    }
                    for r in range(regions_per_image)
                ],
            }
        )
    (root / "image_data.json").write_text(json.dumps(image_data))
    (root / "region_descriptions.json").write_text(json.dumps(descriptions))
