"""Fetching checkpoint files: local paths, `file://` URLs, HTTP(S) and Google Drive share links.

Owns `resolve_weights` (any `weights=` value -> a local path) and `download_weights` (URL -> file in the
torch hub cache, `$TORCH_HOME/hub/checkpoints`). Downloads resume from a `.part` file with an HTTP
Range request, show a progress bar (tqdm when installed), handle Google Drive's "can't scan this file
for viruses" confirmation page for large files (through gdown when it is installed, otherwise by
following the page's confirm form), and verify a sha256 when one is known. Failures are one line that
names the URL and says how to pass a local file instead.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_USER_AGENT = "simdinov2-checkpoint-download"
_DRIVE_ID = re.compile(r"drive\.google\.com/(?:file/d/|open\?(?:.*&)?id=|uc\?(?:.*&)?id=)([\w-]{10,})")
_DRIVE_DOWNLOAD = "https://drive.google.com/uc"


class DownloadError(ConnectionError):
    """A URL could not be fetched; the message says which and how to pass a local file instead."""


class ChecksumError(CheckpointError):
    """A file's sha256 differs from the expected one."""


def cache_dir() -> Path:
    """Where downloaded checkpoints live: `torch.hub.get_dir()/checkpoints` (follows TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def google_drive_file_id(url: str) -> str | None:
    """The file id of a Google Drive share/download link, None for other URLs."""
    match = _DRIVE_ID.search(url)
    return match.group(1) if match else None


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, remove: bool, origin: str) -> None:
    """Raise ChecksumError when `path` does not hash to `expected`; delete it first when `remove`."""
    actual = sha256_of(path)
    if actual.lower() == expected.lower():
        return
    if remove:
        path.unlink(missing_ok=True)
    fate = "the file was removed; download it again" if remove else "the file was left in place"
    raise ChecksumError(
        f"sha256 mismatch for {path} (from {origin}): expected {expected}, got {actual}; {fate} "
        "or pass weights=/local/path of a good copy"
    )


def _default_file_name(url: str) -> str:
    """Cache name: the URL's file name, prefixed by a hash of the URL so two `checkpoint.pth` differ."""
    drive_id = google_drive_file_id(url)
    if drive_id:
        return f"gdrive-{drive_id}.pth"
    base = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:8]}-{base}"


def resolve_weights(
    weights: str | os.PathLike,
    *,
    sha256: str | None = None,
    file_name: str | None = None,
    progress: bool = True,
) -> Path:
    """A local path for `weights`: a path (file or DCP directory), a `file://` URL, or an http(s) URL
    (downloaded into the cache once, see `download_weights`). `sha256` is checked when given; a local
    file that fails the check is reported but never deleted."""
    text = os.fspath(weights)
    scheme = urllib.parse.urlparse(text).scheme.lower()
    if scheme == "file":
        parsed = urllib.parse.urlparse(text)
        path = Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path)))
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URL with a host ({text}); use file:///absolute/path")
    elif scheme in ("http", "https", "ftp"):
        return download_weights(text, sha256=sha256, file_name=file_name, progress=progress)
    elif len(scheme) > 1:  # a one-letter scheme is a Windows drive letter
        raise ValueError(f"unsupported weights URL {text!r}: use a local path, file://, http:// or https://")
    else:
        path = Path(text)
    path = path.expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path} (pass weights= an existing file or a URL)")
    if sha256 and path.is_file():
        verify_sha256(path, sha256, remove=False, origin=text)
    return path


def download_weights(
    url: str,
    *,
    sha256: str | None = None,
    file_name: str | None = None,
    progress: bool = True,
    directory: str | os.PathLike | None = None,
) -> Path:
    """Download `url` into the hub cache (or `directory`) unless already there; return the file path.

    Resumes an interrupted download from `<file>.part`; a finished file is renamed into place only
    after its sha256 (when given) matched, so the cache never holds a bad file.
    """
    folder = Path(directory) if directory is not None else cache_dir()
    dest = folder / (file_name or _default_file_name(url))
    if dest.is_file():
        if sha256:
            verify_sha256(dest, sha256, remove=True, origin=url)
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    drive_id = google_drive_file_id(url)
    use_gdown = drive_id is not None and _gdown_available()
    # gdown keeps its own resumable partial files next to its output and treats an existing output as
    # complete, so it gets an output name distinct from our own partial file.
    part = dest.with_name(dest.name + (".gdown" if use_gdown else ".part"))
    try:
        if use_gdown:
            _download_with_gdown(drive_id, part, progress)
        elif drive_id:
            _fetch(
                f"{_DRIVE_DOWNLOAD}?export=download&id={drive_id}", part, progress, follow_confirm_page=True
            )
        else:
            _fetch(url, part, progress, follow_confirm_page=False)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        raise _unreachable(url, err) from None
    except OSError as err:
        if isinstance(err, (FileNotFoundError, PermissionError)) or err.filename:
            raise  # a local disk problem, not the network
        raise _unreachable(url, err) from None
    if _looks_like_html(part):
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} returned a web page instead of the checkpoint (Google Drive quota or sharing settings?); "
            "download it in a browser and pass weights=/local/path"
        )
    if sha256:
        verify_sha256(part, sha256, remove=True, origin=url)
    os.replace(part, dest)
    return dest


def _unreachable(url: str, err: BaseException) -> DownloadError:
    reason = getattr(err, "reason", None) or err
    return DownloadError(
        f"could not download {url} ({type(err).__name__}: {reason}); download the file yourself and pass "
        "weights=/local/path (a path or a file:// URL)"
    )


def _looks_like_html(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(256).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


# ---------------------------------------------------------------------------------------------- HTTP
def _open(url: str, start: int) -> Any:
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)


def _fetch(url: str, part: Path, progress: bool, follow_confirm_page: bool, hops: int = 3) -> None:
    """Stream `url` into `part`, resuming from its current size when the server honours Range."""
    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # range starts at the end: the previous run got everything
            return
        raise
    with response:
        content_type = response.headers.get("Content-Type", "")
        if follow_confirm_page and content_type.startswith("text/html"):
            if hops == 0:
                raise DownloadError(
                    f"{url}: too many Google Drive confirmation pages; pass weights=/local/path"
                )
            page = response.read(4 * _CHUNK).decode("utf-8", "replace")
            next_url = _drive_confirm_url(page, url)
            if next_url is None:
                raise DownloadError(
                    f"Google Drive did not serve the file at {url} (quota exceeded or not shared publicly?); "
                    "download it in a browser and pass weights=/local/path"
                )
            _fetch(next_url, part, progress, follow_confirm_page, hops - 1)
            return
        resumed = start > 0 and response.status == 206 and _range_start(response) == start
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            _Progress(total, start, part.name, progress) as bar,
        ):
            _copy(response, out, bar)
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume, or pass "
            "weights=/local/path"
        )


def _range_start(response: Any) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _copy(source: BinaryIO, out: BinaryIO, bar: _Progress) -> None:
    for block in iter(lambda: source.read(_CHUNK), b""):
        out.write(block)
        bar.update(len(block))


def _drive_confirm_url(page: str, page_url: str) -> str | None:
    """The real download URL behind Google Drive's large-file warning page.

    Current pages carry a GET form (`id="download-form"`, hidden `id`, `export`, `confirm`, `uuid`);
    older ones a link `/uc?export=download&confirm=TOKEN&id=...`.
    """
    form = re.search(r"<form[^>]*id=\"download-form\"[^>]*>(.*?)</form>", page, re.S | re.I)
    if form:
        action = re.search(r"action=\"([^\"]+)\"", form.group(0), re.I)
        fields = re.findall(
            r"<input[^>]*type=\"hidden\"[^>]*name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", form.group(1), re.I
        )
        if action:
            target = urllib.parse.urljoin(page_url, html.unescape(action.group(1)))
            query = urllib.parse.urlencode([(name, html.unescape(value)) for name, value in fields])
            return f"{target}?{query}" if query else target
    link = re.search(r"href=\"(/uc\?export=download[^\"]*confirm=[^\"]+)\"", page)
    if link:
        return urllib.parse.urljoin(page_url, html.unescape(link.group(1)))
    return None


# ---------------------------------------------------------------------------------------------- gdown
def _gdown_available() -> bool:
    if os.environ.get("SIMDINO_NO_GDOWN"):
        return False
    try:
        import gdown  # noqa: F401
    except ImportError:
        return False
    return True


def _download_with_gdown(file_id: str, part: Path, progress: bool) -> None:
    import gdown

    try:
        result = gdown.download(id=file_id, output=str(part), quiet=not progress, resume=True)
    except Exception as err:  # gdown raises its own exception types for quota / permission pages
        raise _unreachable(f"https://drive.google.com/file/d/{file_id}", err) from None
    if result is None or not part.is_file():
        raise DownloadError(
            f"could not download https://drive.google.com/file/d/{file_id} with gdown; download it in a browser "
            "and pass weights=/local/path"
        )


# ---------------------------------------------------------------------------------------------- progress
class _Progress:
    """tqdm when installed, else a one-line percentage on stderr (at most 4 updates a second)."""

    def __init__(self, total: int | None, initial: int, name: str, enabled: bool) -> None:
        self.total, self.done, self.name, self.enabled = total, initial, name, enabled
        self._bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name
                )
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last > 0.25:
            self._last = time.monotonic()
            self._print()

    def _print(self) -> None:
        mb = self.done / 2**20
        if self.total:
            text = (
                f"\r{self.name}: {100 * self.done / self.total:5.1f}% ({mb:.1f}/{self.total / 2**20:.1f} MiB)"
            )
        else:
            text = f"\r{self.name}: {mb:.1f} MiB"
        sys.stderr.write(text)
        sys.stderr.flush()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._print()
            sys.stderr.write("\n")


__all__ = [
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "download_weights",
    "google_drive_file_id",
    "resolve_weights",
    "sha256_of",
    "verify_sha256",
]
