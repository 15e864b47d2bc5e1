"""hubconf.py and simdinov2.checkpoint.download: the seven release entries, offline.

Downloads are served by a local HTTP server (Range support, a fake Google Drive confirmation page), so
no test touches the network.
"""

import argparse
import hashlib
import http.server
import importlib.util
import os
import pathlib
import socket
import threading
import urllib.parse

import pytest
import torch

from simdinov2.checkpoint import CheckpointError, ChecksumError, DownloadError, download, resolve_weights
from simdinov2.models import build_vit, vit_base, vit_tiny

REPO = pathlib.Path(__file__).resolve().parents[2]
# Google Drive ids of the seed README's tables, in table order.
README_DRIVE_IDS = {
    "simdino_vitb16": "1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ",
    "simdino_vitl16": "1jy27VYHHSxllMqWr5DiKk80y9ZBrKkPV",
    "simdinov2_vitb16": "1g_f3aEFdfiKCn8IH11Y4FwtEDu1pPbQv",
    "simdinov2_vitl16": "1IotEWszh1chGtzwl8X_ul6j3ACT7Tn6i",
    "dino_vitb16": "1o-FtJ0TDNPAZiREa_qjGENksYL_3Ohc8",
    "dinov2_vitb16": "1QZpUkC_yX2V9rWqHW3qLTFfvD6BUqyN_",
    "dinov2_vitl16": "1p-cUWNShnZEFBJ_mnw77HnvCFIV0FthN",
}
V1_ENTRIES = ("simdino_vitb16", "simdino_vitl16", "dino_vitb16")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """One intra-op thread (shared cores), a private hub cache, gdown off (our Drive code is tested)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("SIMDINO_NO_GDOWN", "1")
    yield
    torch.set_num_threads(threads)


def hub_load(name, **kwargs):
    return torch.hub.load(str(REPO), name, source="local", **kwargs)


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def cls_features(model, size=224):
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(1, 3, size, size))


def save_v1_release(model, path):
    """Released v1 layout: checkpoint.pth of a compiled DDP run with an argparse Namespace."""
    state = model.state_dict()
    torch.save(
        {
            "student": {f"_orig_mod.module.backbone.{k}": v * 0 for k, v in state.items()}
            | {"_orig_mod.module.head.mlp.0.weight": torch.zeros(4, 4)},
            "teacher": {f"_orig_mod.backbone.{k}": v for k, v in state.items()}
            | {"_orig_mod.head.mlp.0.weight": torch.zeros(4, 4)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": []}]},
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_base", patch_size=16, eps=0.05, output_dir="/out"),
            "dino_loss": {},
        },
        path,
    )


def save_v2_release(model, path):
    """Released v2 layout: teacher_checkpoint.pth with chunked blocks and both heads."""
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state |= {"dino_head.mlp.0.weight": torch.zeros(4, 4), "ibot_head.mlp.0.weight": torch.zeros(4, 4)}
    torch.save({"teacher": state}, path)


def tiny_v1():
    torch.manual_seed(1)
    return randomize(build_vit("vit_tiny", 16, v1=True))


def tiny_v2():
    torch.manual_seed(2)
    return randomize(vit_tiny(patch_size=16, num_register_tokens=4, init_values=1e-5, block_chunks=4))


# ---------------------------------------------------------------------------------------------- entries
def test_hubconf_offers_the_seven_release_entries_with_the_readme_links():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == sorted(README_DRIVE_IDS)  # what torch.hub.list shows
    assert "torch" in hubconf.dependencies
    assert list(hubconf._RELEASES) == list(README_DRIVE_IDS)
    for name, drive_id in README_DRIVE_IDS.items():
        assert download.google_drive_file_id(hubconf._RELEASES[name].url) == drive_id


@pytest.mark.parametrize(
    "name", ["dinov2_vitb14", "dinov2_vits14", "dino_vits16", "simdino_vits16", "vit_base"]
)
def test_unknown_entries_answer_with_the_list_of_entries(name):
    """DINOv2 habits through torch.hub.load(..., source="local"): the list of entries, not "Cannot find
    callable"; the released entries still load."""
    with pytest.raises(AttributeError) as exc:
        hub_load(name)
    message = str(exc.value)
    assert f"no entry {name!r}" in message and "\n" not in message
    assert ", ".join(README_DRIVE_IDS) in message
    assert ("facebookresearch/dinov2" in message) == name.startswith(("dino_", "dinov2_"))
    assert hub_load("dinov2_vitb16", pretrained=False, arch="vit_tiny").embed_dim == 192


@pytest.mark.parametrize("name", list(README_DRIVE_IDS))
def test_random_weight_models_have_the_release_layout(name):
    model = hub_load(name, pretrained=False, arch="vit_tiny")
    assert model.patch_size == 16 and model.embed_dim == 192
    if name in V1_ENTRIES:
        assert model.mask_token is None and model.num_register_tokens == 0 and not model.chunked_blocks
        assert not any(k.endswith("ls1.gamma") for k in model.state_dict())
    else:
        assert model.mask_token is not None and model.num_register_tokens == 4 and len(model.blocks) == 4
        assert model.block_list()[0].ls1.gamma.flatten()[0].item() == pytest.approx(1e-5)


# ---------------------------------------------------------------------------------------------- local weights
def test_released_layouts_load_through_hub_from_path_and_file_url(tmp_path):
    v1, v2 = tiny_v1(), tiny_v2()
    save_v1_release(v1, tmp_path / "checkpoint.pth")
    save_v2_release(v2, tmp_path / "teacher_checkpoint.pth")

    loaded = hub_load("simdino_vitb16", weights=str(tmp_path / "checkpoint.pth"), arch="vit_tiny")
    assert loaded.mask_token is None and loaded.num_register_tokens == 0
    assert torch.equal(cls_features(loaded.eval()), cls_features(v1))
    assert (loaded.interpolate_antialias, loaded.interpolate_offset) == (False, 0.1)  # DINO v1's +0.1

    url = (tmp_path / "teacher_checkpoint.pth").as_uri()
    loaded = hub_load("simdinov2_vitb16", weights=url, arch="vit_tiny")
    assert loaded.num_register_tokens == 4 and loaded.chunked_blocks
    # The released SimDINOv2 checkpoints were trained with upstream v2's interpolation.
    assert (loaded.interpolate_antialias, loaded.interpolate_offset) == (True, 0.0)
    assert torch.equal(cls_features(loaded.eval()), cls_features(v2))
    dense = loaded.forward_features(torch.zeros(1, 3, 224, 224))
    assert dense["x_norm_regtokens"].shape == (1, 4, 192) and dense["x_norm_patchtokens"].shape == (
        1,
        196,
        192,
    )

    with pytest.raises(CheckpointError, match=r"checkpoint is vit_tiny/16 \(embed 192.*model is vit_base/16"):
        hub_load("dino_vitb16", weights=str(tmp_path / "checkpoint.pth"))
    with pytest.raises(ValueError, match="pretrained=False"):
        hub_load("dino_vitb16", pretrained=False, weights=str(tmp_path / "checkpoint.pth"))
    with pytest.raises(FileNotFoundError, match="weights not found"):
        hub_load("dino_vitb16", weights=str(tmp_path / "missing.pth"))


@pytest.mark.slow
def test_done_when_vit_base_release_layouts_give_the_exact_function(tmp_path):
    """The issue's acceptance check at real size: ViT-B/16, 224 px, both released layouts."""
    torch.manual_seed(3)
    v1 = randomize(build_vit("vit_base", 16, v1=True))
    save_v1_release(v1, tmp_path / "checkpoint.pth")
    expected = cls_features(v1)
    del v1
    loaded = hub_load("simdino_vitb16", pretrained=True, weights=str(tmp_path / "checkpoint.pth"))
    assert torch.equal(cls_features(loaded.eval()), expected)
    del loaded
    (tmp_path / "checkpoint.pth").unlink()

    v2 = randomize(vit_base(patch_size=16, num_register_tokens=4, init_values=1e-5, block_chunks=4))
    save_v2_release(v2, tmp_path / "teacher_checkpoint.pth")
    expected = cls_features(v2)
    del v2
    loaded = hub_load("simdinov2_vitb16", weights=(tmp_path / "teacher_checkpoint.pth").as_uri())
    assert loaded.num_register_tokens == 4 and loaded.embed_dim == 768
    assert torch.equal(cls_features(loaded.eval()), expected)


class _Booby:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_booby_trapped_weights_are_refused_through_hub(tmp_path):
    marker = tmp_path / "PWNED"
    state = {f"backbone.{k}": v for k, v in tiny_v2().state_dict().items()}
    torch.save({"teacher": state, "extra": _Booby(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*pickled code"):
        hub_load("simdinov2_vitb16", weights=str(tmp_path / "evil.pth"), arch="vit_tiny")
    assert not marker.exists()


def test_local_sha256_mismatch_is_reported_and_the_file_kept(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.ones(1)}, path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve_weights(path, sha256=good) == path
    with pytest.raises(ChecksumError, match=f"sha256 mismatch.*expected {'0' * 64}, got {good}"):
        resolve_weights(path.as_uri(), sha256="0" * 64)
    assert path.exists()  # a user's own file is never deleted


# ---------------------------------------------------------------------------------------------- downloads
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files` (path -> bytes) with Range support; `/uc` imitates Google Drive's warning page."""

    files: dict = {}
    log: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.log.append((url.path, query, self.headers.get("Range")))
        if url.path == "/uc":  # large-file page: a GET form carrying confirm + uuid
            page = (
                "<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses."
                '<form id="download-form" action="/download" method="get">'
                '<input type="submit" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{query.get("id", "")}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t">'
                '<input type="hidden" name="uuid" value="u-42"></form></body></html>'
            ).encode()
            return self._send(200, page, "text/html; charset=utf-8")
        if url.path == "/download":
            if query.get("confirm") != "t" or query.get("uuid") != "u-42":
                return self._send(403, b"<html>forbidden</html>", "text/html")
            return self._send_file(self.files.get(f"drive:{query.get('id')}"))
        return self._send_file(self.files.get(url.path))

    def _send_file(self, data):
        if data is None:
            return self._send(404, b"not found", "text/plain")
        start = 0
        ranged = self.headers.get("Range")
        if ranged:
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(416, b"", "text/plain")
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def _send(self, code, body, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.log = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_default_weights_download_through_the_drive_confirm_page_and_resume(tmp_path, server, monkeypatch):
    httpd, base = server
    model = tiny_v1()
    save_v1_release(model, tmp_path / "release.pth")
    data = (tmp_path / "release.pth").read_bytes()
    _Handler.files[f"drive:{README_DRIVE_IDS['simdino_vitb16']}"] = data
    monkeypatch.setattr(download, "_DRIVE_DOWNLOAD", f"{base}/uc")

    # an interrupted earlier download left half the file behind
    cache = download.cache_dir()
    cache.mkdir(parents=True)
    (cache / "simdino_vitb16.pth.part").write_bytes(data[: len(data) // 2])
    loaded = hub_load("simdino_vitb16", arch="vit_tiny", progress=False)  # pretrained=True, the README link
    assert torch.equal(cls_features(loaded.eval()), cls_features(model))
    assert (cache / "simdino_vitb16.pth").read_bytes() == data and not (
        cache / "simdino_vitb16.pth.part"
    ).exists()
    paths = [entry[0] for entry in _Handler.log]
    assert paths == ["/uc", "/download"]
    assert _Handler.log[1][2] == f"bytes={len(data) // 2}-"  # resumed, not restarted

    hub_load("simdino_vitb16", arch="vit_tiny", progress=False)  # cached: no new request
    assert len(_Handler.log) == 2


def test_http_download_sha256_mismatch_removes_the_file(tmp_path, server):
    httpd, base = server
    payload = b"not really a checkpoint" * 1000
    _Handler.files["/w/ckpt.pth"] = payload
    target = tmp_path / "dl"
    with pytest.raises(ChecksumError, match="sha256 mismatch.*the file was removed"):
        download.download_weights(f"{base}/w/ckpt.pth", sha256="f" * 64, directory=target, progress=False)
    assert list(target.iterdir()) == []
    good = hashlib.sha256(payload).hexdigest()
    path = download.download_weights(f"{base}/w/ckpt.pth", sha256=good, directory=target, progress=True)
    assert path.read_bytes() == payload and path.name.endswith("-ckpt.pth")


def test_unreachable_url_is_one_line_saying_how_to_pass_weights(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/simdino.pth"
    with pytest.raises(DownloadError) as info:
        hub_load("simdino_vitb16", weights=url, arch="vit_tiny", progress=False)
    message = str(info.value)
    assert url in message and "weights=/local/path" in message and "\n" not in message


def test_drive_links_and_confirm_pages_are_parsed():
    for url in (
        "https://drive.google.com/file/d/1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ/view?usp=drive_link",
        "https://drive.google.com/uc?export=download&id=1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ",
        "https://drive.google.com/open?id=1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ",
    ):
        assert download.google_drive_file_id(url) == "1nqcX0IgKQ8H3ZFJKaEx_O5wTVqdorLyQ"
    assert download.google_drive_file_id("https://example.com/file/d/x.pth") is None
    old_page = '<a id="uc-download-link" href="/uc?export=download&amp;confirm=AbCd&amp;id=XYZ">Download</a>'
    assert (
        download._drive_confirm_url(old_page, "https://drive.google.com/uc?export=download&id=XYZ")
        == "https://drive.google.com/uc?export=download&confirm=AbCd&id=XYZ"
    )
    assert download._drive_confirm_url("<html>Quota exceeded</html>", "https://drive.google.com/uc") is None
