"""The official CIFAR-10 files' md5 sums, and which copy of the data a run used. Torch-free, so the
report names the data copy of old result folders from what their runs recorded.

Why it matters (protocol v3): the shared development copy is JPEG-derived (its pixel values moved a
little and its md5 sums differ), so its numbers are not directly comparable with published CIFAR-10
results; a report must say which copy produced its rows, as recorded, not as remembered.
"""

from __future__ import annotations

import hashlib

# The official per-file md5 sums (the same ones torchvision checks).
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
COPY_TEXT = {
    "official": "official CIFAR-10 files (md5 sums verified)",
    "derived": "a derived copy, not the official files (their md5 sums differ: e.g. the shared JPEG-derived copy); "
    "its numbers are not directly comparable with published CIFAR-10 results",
}


def fingerprint(sums: dict[str, str]) -> str:
    """A dataset's fingerprint (part of every run id): the SHA-256 of its files' md5 sums, in file order."""
    return hashlib.sha256("".join(sums[f] for f in sorted(sums)).encode()).hexdigest()[:16]


OFFICIAL_FINGERPRINT = fingerprint(FILE_MD5)


def copy_of(data_fingerprint: str) -> str:
    """ "official" or "derived" for a run's recorded data fingerprint ("" when none was recorded)."""
    if not data_fingerprint:
        return ""
    return "official" if data_fingerprint == OFFICIAL_FINGERPRINT else "derived"
