"""The training examples and their order: photos cut to aspect-ratio buckets, and which examples
(and which of them mirrored) make batch k of a run, computable from (seed, k) alone so that a
resumed run sees exactly the batches an uninterrupted one would.

Order rule: epoch e draws a permutation of the examples from `torch.Generator().manual_seed(seed + e)`,
then one coin per example (mirror or not) from the same generator. The permutation is grouped by
bucket, stably, so every batch holds one image size; a bucket's last batch may be short. The
number of batches per epoch depends only on the bucket sizes, so batch k lies in epoch
k // batches_per_epoch. Pure functions, no torch modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

from studio.images import to_rgb


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RGB, exactly the bucket's size
    caption: str  # the prompt this photo is trained with
    bucket: tuple[int, int]  # (width, height)
    original_size: tuple[int, int]  # (height, width) of the photo, SDXL's micro-conditioning
    crop_top_left: tuple[int, int]  # (top, left) of the centre crop in the resized photo


def nearest_bucket(size: tuple[int, int], bucket_sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect is closest to `size` (width, height) in log ratio; the first on ties."""
    aspect = math.log(size[0] / size[1])
    return min(bucket_sizes, key=lambda wh: abs(math.log(wh[0] / wh[1]) - aspect))


def cut_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """`image` scaled to cover `bucket` and centre-cropped to it, and the crop's (top, left)."""
    w, h = bucket
    scale = max(w / image.width, h / image.height)
    covered = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    top, left = (covered[1] - h) // 2, (covered[0] - w) // 2
    return ImageOps.fit(image, bucket, Image.Resampling.LANCZOS), (top, left)


def prepare_examples(images: Sequence[Image.Image], captions: Sequence[str | None] | None, prompt: str,
                     bucket_sizes: Sequence[tuple[int, int]]) -> list[Example]:
    """One Example per photo: its nearest bucket, the photo cut to it, its caption (else `prompt`)."""
    captions = list(captions) if captions is not None else [None] * len(images)
    if len(captions) != len(images):
        raise ValueError(f"captions must be one per image ({len(images)}), got {len(captions)}")
    examples = []
    for image, caption in zip(images, captions):
        rgb = to_rgb(image)
        bucket = nearest_bucket(rgb.size, bucket_sizes)
        cut, crop = cut_to_bucket(rgb, bucket)
        text = caption.strip() if caption and caption.strip() else prompt
        examples.append(Example(cut, text, bucket, (rgb.height, rgb.width), crop))
    return examples


def group_batches(order: Sequence[int], buckets: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """`order` stably grouped by bucket (buckets in order of first appearance), cut into batches
    that never mix buckets."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i in order:
        groups.setdefault(buckets[i], []).append(i)
    return [g[s:s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def batches_per_epoch(buckets: Sequence[tuple[int, int]], batch_size: int) -> int:
    counts: dict[tuple[int, int], int] = {}
    for b in buckets:
        counts[b] = counts.get(b, 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())


def epoch_plan(seed: int, epoch: int, buckets: Sequence[tuple[int, int]], batch_size: int,
               random_flip: bool) -> tuple[list[list[int]], list[bool]]:
    """(batches of example indices, mirror flag per example) of one epoch."""
    import torch

    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(buckets), generator=generator).tolist()
    coins = torch.rand(len(buckets), generator=generator)  # drawn even when unused: same stream either way
    flips = [bool(c < 0.5) and random_flip for c in coins]
    return group_batches(order, buckets, batch_size), flips


def batch_at(seed: int, k: int, buckets: Sequence[tuple[int, int]], batch_size: int,
             random_flip: bool) -> list[tuple[int, bool]]:
    """Batch k (0-based, counted over the whole run) as [(example index, mirrored), ...]."""
    per_epoch = batches_per_epoch(buckets, batch_size)
    epoch, j = divmod(k, per_epoch)
    batches, flips = epoch_plan(seed, epoch, buckets, batch_size, random_flip)
    return [(i, flips[i]) for i in batches[j]]


# Class images' order seeds: apart from the photos' (seed + epoch, far below 2**62).
CLASS_SEED_OFFSET = 2**62


def class_batch_at(seed: int, k: int, count: int, batch_size: int, num_class: int,
                   random_flip: bool) -> list[tuple[int, bool]]:
    """The `count` class images (prior preservation) that join batch k, as [(index, mirrored), ...].

    Slot j of batch k is position k * batch_size + j of an endless sequence of epochs over the
    class images, each epoch a permutation (and mirror coins) drawn as `epoch_plan` draws the
    photos', from seed + CLASS_SEED_OFFSET: every class image is seen once per epoch, and the
    choice depends on (seed, k) alone, like `batch_at`'s."""
    chosen = []
    same_size = [(0, 0)] * num_class  # the class images share one bucket: one permutation per epoch
    for position in range(k * batch_size, k * batch_size + count):
        epoch, j = divmod(position, num_class)
        (order,), flips = epoch_plan(CLASS_SEED_OFFSET + seed, epoch, same_size, num_class, random_flip)
        chosen.append((order[j], flips[order[j]]))
    return chosen
