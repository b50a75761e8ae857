"""Downloads that resume, show progress, verify what they got and land atomically.

Every caller passes `offline_hint`: the flag / environment variable that points at a local copy,
so that a machine without network gets an error that says what to do next.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import requests
from tqdm import tqdm

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _published_sha256(resp: requests.Response) -> str | None:
    # Hugging Face publishes the sha256 of LFS files as their ETag.
    etag = (resp.headers.get("X-Linked-Etag") or resp.headers.get("ETag") or "").strip('W/"')
    return etag.lower() if re.fullmatch(r"[0-9a-fA-F]{64}", etag) else None


def download(url: str, dest: Path, *, offline_hint: str, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest` (skipped when `dest` exists), resuming a partial `dest.part`."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = requests.get(url, stream=True, timeout=timeout, headers=headers, allow_redirects=True)
        if resp.status_code == 416:  # the partial file is already complete
            resp.close()
            resp = None
        else:
            resp.raise_for_status()
    except requests.RequestException as e:
        raise DownloadError(
            f"Could not download {url}: {type(e).__name__}: {e}.\n"
            f"If this machine is offline, get the file elsewhere and {offline_hint}"
        ) from e

    expected_sha = sha256
    if resp is not None:
        expected_sha = sha256 or _published_sha256(resp)
        resuming = resp.status_code == 206
        if not resuming:
            have = 0
        total = int(resp.headers.get("Content-Length", 0)) + have or None
        try:
            with open(part, "ab" if resuming else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name
            ) as bar:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except requests.RequestException as e:
            raise DownloadError(
                f"Download of {url} broke off ({e}); run the command again to resume from {part}."
            ) from e
        finally:
            resp.close()
        if total is not None and part.stat().st_size != total:
            raise DownloadError(
                f"Download of {url} is incomplete ({part.stat().st_size} of {total} bytes); run again to resume."
            )
    if expected_sha is not None:
        got = sha256_of(part)
        if got != expected_sha:
            part.unlink()
            raise DownloadError(f"{url} failed its integrity check (sha256 {got}, expected {expected_sha}); run again.")
    os.replace(part, dest)
    return dest
