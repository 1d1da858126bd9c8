"""Security: what the served app exposes and refuses (issue 13).

Replays of the known Gradio file-route and payload attacks against the running app, plain HTTP
(http.client, so no client normalises a path or uploads a file for us); logins and the upload size
limit on an app of their own; the launch options and the upload-path check as units; and a walk
over the source for unpickling, eval and server-side fetches.
"""

from __future__ import annotations

import ast
import functools
import http.client
import http.server
import io
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from conftest import ROOT, start_app, stop_app
from PIL import Image
from test_app_api import ARGS
from test_images import png_header_claiming

FILE_DATA = {"_type": "gradio.FileData"}
REFUSED = (400, 403, 404)


def get(url: str, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET `target` exactly as written (no dot-segment removal, no re-encoding)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upload(url: str, path: Path) -> dict:
    """`path` uploaded as a browser would: the FileData of its copy in Gradio's upload folder."""
    import httpx

    response = httpx.post(url + "gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=30)
    return {"path": response.json()[0], "meta": FILE_DATA}


@functools.cache
def api_info(url: str) -> dict:
    import httpx

    return httpx.get(url + "gradio_api/info", timeout=30).json()["named_endpoints"]


def raw_call(url: str, api: str, **values) -> str:
    """Call /<api> with raw JSON values (the others at their defaults), as a hand-written client
    would; returns the event stream ("event: complete" or "event: error" and the data)."""
    import httpx

    params = api_info(url)[f"/{api}"]["parameters"]
    data = [values[p["parameter_name"]] if p["parameter_name"] in values else p.get("parameter_default")
            for p in params]
    response = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=30)
    if response.status_code != 200:  # refused before any event was made (studio.urlguard)
        return f"event: error\ndata: {response.status_code} {response.text}"
    event = response.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api}/{event}", timeout=120).text


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves a PNG for any GET and records every request it gets."""

    requests: list[str] = []

    def do_GET(self):  # http.server's name
        Recorder.requests.append(self.path)
        body = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(body, "PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body.getvalue())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bait():
    """A local HTTP server a URL payload would make the app fetch from: (base URL, requests seen)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Recorder.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}", Recorder.requests
    server.shutdown()


@pytest.fixture(scope="module")
def secrets(app, tiny_cache) -> dict[str, Path]:
    """Files the app must never serve, by name: each exists, so a refusal is not a mere 404."""
    outputs = app[1]
    home = outputs.parent  # the app's working folder: loras/, user_presets/, training/ live there
    files = {"app log": home / "app.log", "source": ROOT / "app.py", "passwd": Path("/etc/passwd")}
    # Not named like a LoRA, preset or run: other tests list those folders through the app.
    for name, path in (("lora", home / "loras/notes.txt"), ("preset", home / "user_presets/notes.txt"),
                       ("run", home / "training/notes.txt"), ("model cache", tiny_cache / "notes.txt")):
        files[name] = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret {name} bytes 31415")
    return files


# --- the file route ------------------------------------------------------------------------------

def attacks(outputs: Path, secrets: dict[str, Path], bait_url: str) -> dict[str, str]:
    """Request targets for /gradio_api/file= that reach outside the served folders, by name."""
    log = secrets["app log"]  # outputs/../app.log
    up = f"{quote(outputs.as_posix())}/"
    return {
        **{f"absolute {name}": quote(path.resolve().as_posix()) for name, path in secrets.items()},
        "dot-dot": f"{up}../{log.name}",
        "encoded dot-dot": f"{up}%2e%2e%2f{log.name}",
        "encoded slash": f"{up}..%2f{log.name}",
        "double-encoded": f"{up}%252e%252e%252f{log.name}",
        "backslash": f"{up}..%5c{log.name}",
        "deep dot-dot": f"{up}" + "../" * 12 + "etc/passwd",
        "relative": "app.log",
        "url": f"{bait_url}/bait.png",
        "file url": "file:///etc/passwd",
    }


def test_the_file_route_refuses_everything_outside_outputs_and_assets(app, secrets, bait):
    url, outputs = app
    bait_url, seen = bait
    contents = {name: path.read_bytes() for name, path in secrets.items()}
    for name, target in attacks(outputs, secrets, bait_url).items():
        status, body = get(url, f"/gradio_api/file={target}")
        assert status in REFUSED, (name, target, status, body[:200])
        assert not any(c[:200] in body for c in contents.values() if c), (name, body[:200])
    assert seen == []  # a URL as a file is not fetched from a local address


def test_outputs_and_assets_are_served(app):
    from gradio_client import Client

    url, outputs = app
    Client(url, verbose=False).predict(**ARGS, api_name="/txt2img")
    made = max(outputs.rglob("*.png"), key=lambda p: p.stat().st_mtime)
    for path in (made, ROOT / "assets" / "icon.png", ROOT / "assets" / "sphere-viewer.js"):
        status, body = get(url, "/gradio_api/file=" + quote(path.as_posix()))
        assert status == 200 and body == path.read_bytes(), (path, status)


# --- raw payloads --------------------------------------------------------------------------------

@pytest.mark.parametrize("api, field", [("img2img", "image"), ("inpaint", "mask"), ("control_hint", "image")])
def test_raw_payloads_naming_server_files_or_urls_are_refused(app, bait, api, field):
    url, outputs = app
    bait_url, seen = bait
    other = outputs / "another-users-image.png"  # a real image: reading it would succeed
    outputs.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "white").save(other)
    try:
        check_payloads(url, api, field, other, bait_url)
    finally:
        other.unlink()
    assert seen == []  # nothing fetched from a URL


def check_payloads(url: str, api: str, field: str, other: Path, bait_url: str) -> None:
    from gradio.utils import get_upload_folder

    outputs = other.parent
    before = sorted(outputs.rglob("*.png"))
    # Who refuses: Gradio (a FileData with "meta" not in its upload folder; a bare string is not an
    # image's FileData; its SSRF guard refuses a local host), or Studio's upload_path (the rest).
    gradio_cache, not_image, ours, no_url = ("not uploaded by a user", "valid dictionary or instance of ImageData",
                                             "must be a file uploaded to this app", "Studio does not fetch URLs")
    payloads = [
        ({"path": "/etc/passwd", "meta": FILE_DATA}, gradio_cache),
        ({"path": "/etc/passwd"}, ours),
        ("/etc/passwd", not_image),
        ({"path": str(other), "meta": FILE_DATA}, gradio_cache),
        ({"path": str(other)}, ours),
        (str(other), not_image),
        ({"path": f"{get_upload_folder()}/../..{other}"}, ours),
        ({"url": f"{bait_url}/x.png"}, no_url),
        ({"url": f"{bait_url}/x.png", "meta": FILE_DATA}, no_url),
        ({"path": f"{bait_url}/x.png", "meta": FILE_DATA}, no_url),  # refused before Gradio would fetch it
        ({"path": f"{bait_url}/x.png"}, no_url),
        ({"path": "file:///etc/passwd"}, no_url),
    ]
    if api != "img2img":  # the same check serves every field: the payloads that reach it
        payloads = [(payload, expected) for payload, expected in payloads if expected in (ours, no_url)][::2]
    good = upload(url, other)  # /inpaint's image, so that its mask is reached
    for payload, expected in payloads:
        values = {field: payload, "prompt": "x"} | ({"image": good} if api == "inpaint" else {})
        stream = raw_call(url, api, **values)
        assert "event: error" in stream and "event: complete" not in stream, (payload, stream[-500:])
        assert expected in stream, (payload, stream[-500:])
    assert sorted(outputs.rglob("*.png")) == before


# --- uploads: a pixel limit before decoding, then re-encoded --------------------------------------

@pytest.mark.parametrize("api, field, extra", [
    ("img2img", "image", {"prompt": "x"}),
    ("inpaint", "image", {"prompt": "x", "mask": "good"}),
    ("inpaint", "mask", {"prompt": "x", "image": "good"}),
    ("controlnet", "control_image", {"prompt": "x"}),
    ("controlnet", "control_hint", {"prompt": "x", "control_image": None}),
    ("control_hint", "image", {}),
    ("upscale", "image", {}),
    ("outpaint", "image", {"prompt": "x"}),
    ("train_lora", "images", {"trigger_word": "sks", "model": "tiny"}),
])
def test_every_image_upload_is_refused_over_the_pixel_limit_before_decoding(app, tmp_path, api, field, extra):
    """A 9000×9000 header on a few bytes of data: refused for its size, not as a truncated file,
    so the size was read before any pixel was decoded."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    bomb.write_bytes(png_header_claiming(9000, 9000))
    Image.new("RGB", (64, 64), "white").save(good)
    values = {k: handle_file(str(good)) if v == "good" else v for k, v in extra.items()}
    values[field] = ([handle_file(str(bomb)), handle_file(str(good)), handle_file(str(good))] if field == "images"
                     else handle_file(str(bomb)))
    with pytest.raises(AppError, match="9000×9000 = 81 megapixels; Studio accepts at most 67"):
        Client(app[0], verbose=False).predict(**values, api_name=f"/{api}")


def test_an_upload_is_decoded_and_re_encoded_without_its_metadata_or_trailing_bytes(tmp_path):
    """A phone photo's EXIF (location), a comment and bytes hidden after the image never reach
    what Studio keeps (here a training run's copy of the photo); the pixels do."""
    from studio.images import open_image
    from studio.training.runs import IMAGES, save_images

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x010E] = "SECRET-EXIF-DESCRIPTION"  # ImageDescription
    path = tmp_path / "photo.png"
    photo.save(path, exif=exif, pnginfo=_text_chunk("Comment", "SECRET-COMMENT"))
    path.write_bytes(path.read_bytes() + b"SECRET-TRAILING-PAYLOAD")
    opened = open_image(path)
    save_images(tmp_path / "run", [opened])
    kept = (tmp_path / "run" / IMAGES / "0000.png").read_bytes()
    for secret in (b"SECRET-EXIF-DESCRIPTION", b"SECRET-COMMENT", b"SECRET-TRAILING-PAYLOAD"):
        assert secret in path.read_bytes() and secret not in kept
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kept))), np.asarray(photo))


def _text_chunk(key: str, value: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


def test_a_png_dropped_to_restore_settings_is_not_decoded_past_the_pixel_limit(tmp_path):
    from studio.metadata import read_png_settings

    path = tmp_path / "big.png"
    path.write_bytes(png_header_claiming(9000, 9000))
    with pytest.raises(ValueError, match="the image is 9000×9000; Studio reads settings from PNGs of at most 67"):
        read_png_settings(str(path))
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small, pnginfo=_text_chunk("parameters", "a cat\nSteps: 3, Seed: 5"))
    with pytest.raises(ValueError, match="the image is 100×100"):
        read_png_settings(str(small), max_pixels=5000)
    assert read_png_settings(str(small))[1]["seed"] == 5


# --- logins and the upload size limit (an app of their own) -------------------------------------

@pytest.fixture(scope="module")
def locked(tmp_path_factory, tiny_cache):
    """A Studio on 0.0.0.0 with a login file and a 64 kb upload limit: (url, user, password, log)."""
    tmp = tmp_path_factory.mktemp("locked-app")
    (tmp / "logins").write_text("# Studio logins\nalice:s3cret:with:colons\n\nbob:hunter2\n")
    proc, url, _ = start_app(tmp, tiny_cache, "--model", "tiny", "--host", "0.0.0.0",
                             "--auth-file", str(tmp / "logins"), "--max-file-size", "64kb")
    try:
        yield url, "alice", "s3cret:with:colons", tmp / "app.log"
    finally:
        stop_app(proc)


def login(url: str, user: str, password: str):
    import httpx

    client = httpx.Client(base_url=url, timeout=30)
    response = client.post("login", data={"username": user, "password": password})
    return client, response


def test_without_a_login_nothing_is_served(locked):
    url, *_ = locked
    icon = quote((ROOT / "assets" / "icon.png").as_posix())
    for target in ("/config", "/gradio_api/info", f"/gradio_api/file={icon}"):
        status, body = get(url, target)
        assert status == 401, (target, status)
        assert b"txt2img" not in body and b"PNG" not in body[:8]
    import httpx

    call = httpx.post(f"{url}gradio_api/call/txt2img", json={"data": ["x"]}, timeout=30)
    assert call.status_code == 401
    _, wrong = login(url, "alice", "not-the-password")
    assert wrong.status_code in (400, 401)


def test_with_a_login_the_app_works(locked):
    from gradio_client import Client

    url, user, password, _ = locked
    client, response = login(url, user, password)
    assert response.status_code == 200
    assert "txt2img" in json.dumps(client.get("config").json())
    presets = Client(url, auth=(user, password), verbose=False).predict(api_name="/presets")
    assert "Fast draft" in [p["name"] for p in presets]
    icon = ROOT / "assets" / "icon.png"
    assert client.get("gradio_api/file=" + quote(icon.as_posix())).content == icon.read_bytes()


def test_the_exposed_start_warns_and_never_prints_a_password(locked):
    *_, password, log = locked
    text = log.read_text(errors="replace")
    assert "Studio is served on 0.0.0.0, reachable from other machines; only the --auth users" in text
    assert password not in text and "hunter2" not in text


def test_an_upload_over_the_size_limit_is_refused(locked):
    url, user, password, _ = locked
    client, _ = login(url, user, password)
    small = client.post("gradio_api/upload", files={"files": ("a.png", b"\0" * 1000, "image/png")})
    assert small.status_code == 200 and len(small.json()) == 1
    big = client.post("gradio_api/upload", files={"files": ("b.png", b"\0" * (65 * 1024), "image/png")})
    assert big.status_code == 413 and "File size exceeded" in big.text


# --- launch options and the upload-path check, as units ----------------------------------------

def test_sizes_parse_as_gradio_reads_them():
    from studio.serve import DEFAULT_MAX_FILE_SIZE, parse_size

    assert parse_size("200mb") == 200 * 1024**2 == parse_size(DEFAULT_MAX_FILE_SIZE)
    assert parse_size("64KB") == 65536 and parse_size("1 gb") == 1024**3 and parse_size("500") == 500
    # A 67-megapixel RGB image stored uncompressed fits the default.
    assert parse_size(DEFAULT_MAX_FILE_SIZE) > 8192 * 8192 * 3
    for bad in ("", "mb", "-1mb", "0", "1.5mb", "10 parsecs"):
        with pytest.raises(ValueError, match="expected a positive size such as 200mb"):
            parse_size(bad)


@pytest.mark.parametrize("host, share, auth, expected", [
    ("127.0.0.1", False, False, None),
    ("localhost", False, False, None),
    ("::1", False, False, None),
    ("127.0.1.1", False, False, None),
    ("0.0.0.0", False, False, "on 0.0.0.0, reachable from other machines WITHOUT A PASSWORD"),
    ("192.168.1.20", False, True, "on 192.168.1.20, reachable from other machines; only the --auth users"),
    ("studio.local", False, False, "on studio.local"),
    ("127.0.0.1", True, False, "through a public share link WITHOUT A PASSWORD"),
    ("127.0.0.1", True, True, "through a public share link; only the --auth users"),
])
def test_an_exposed_app_warns(host, share, auth, expected):
    from studio.serve import exposure_warning

    warning = exposure_warning(host, share, auth)
    assert warning is None if expected is None else expected in warning
    if expected is not None and not auth:
        assert "--auth USER:PASSWORD" in warning


def test_logins_from_options_and_a_file(tmp_path):
    from studio.serve import read_accounts

    assert read_accounts([], None) is None  # no login: an open app
    file = tmp_path / "logins"
    file.write_text("# team\n carol:pa:ss \n\n")
    assert read_accounts(["alice:one", "bob:two"], file) == [("alice", "one"), ("bob", "two"), ("carol", "pa:ss")]
    cases = [
        (["alice"], None, "--auth #1 must be USER:PASSWORD, got an entry without ':'"),
        (["alice:one", ":pw-secret"], None, "--auth #2 must be USER:PASSWORD with a non-empty user name"),
        (["alice:"], None, "--auth #1 must be USER:PASSWORD with a non-empty password"),
        (["alice:one", "alice:pw-secret"], None, "each user must be given once, got 'alice' more than once"),
        ([], tmp_path / "missing", "--auth-file: cannot read"),
    ]
    bad_file = tmp_path / "bad"
    bad_file.write_text("ok:fine\npw-secret-without-user\n")
    cases.append(([], bad_file, f"--auth-file {bad_file} line 2 must be USER:PASSWORD"))
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    cases.append(([], empty, "holds no USER:PASSWORD line"))
    for options, path, message in cases:
        with pytest.raises(ValueError) as err:
            read_accounts(options, path)
        assert message in str(err.value) and "pw-secret" not in str(err.value), str(err.value)


def test_only_outputs_and_assets_are_allowed_and_private_folders_are_blocked(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT))
    from app import ASSETS, parse_args
    from studio.serve import launch_options, private_paths

    _, args = parse_args(["--outputs", str(tmp_path / "out"), "--lora-dir", str(tmp_path / "loras"),
                          "--user-presets", str(tmp_path / "mine"), "--cache-dir", str(tmp_path / "cache"),
                          "--auth", "alice:one", "--share"])
    options = launch_options(args, served=[tmp_path / "out", ASSETS])
    assert options["allowed_paths"] == [str(tmp_path / "out"), str(ASSETS)]
    assert options["blocked_paths"] == [str(tmp_path / n) for n in ("loras", "training", "mine", "cache")]
    assert options["auth"] == [("alice", "one")] and options["share"] is True
    assert options["max_file_size"] == 200 * 1024**2
    _, args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and launch_options(args, [ASSETS])["auth"] is None
    # A blocked folder wins over an allowed one in Gradio: a LoRA dir holding the outputs is not blocked.
    assert private_paths([tmp_path, tmp_path / "out" / "loras"], [tmp_path / "out"]) == [str(tmp_path / "out" / "loras")]
    with pytest.raises(ValueError, match="--max-file-size: expected a positive size"):
        launch_options(SimpleNamespace(**{**vars(args), "max_file_size": "big"}), [ASSETS])


@pytest.mark.parametrize("value", [
    "/etc/passwd", {"path": "/etc/passwd"}, {"path": "/etc/passwd", "meta": FILE_DATA}, Path("/etc/passwd"),
    "UPLOADS/../outside.png", "UPLOADS/link/passwd", "relative.png", "a\0b", {"url": "http://example.com/a.png"},
    {"url": "file:///etc/passwd"}, "https://example.com/a.png", {"path": "file:///etc/passwd"}, {"path": None},
    None, 3, "",
])
def test_upload_path_takes_only_files_in_the_upload_folder(tmp_path, monkeypatch, value):
    from studio.ui.tab import upload_path

    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"x")
    (uploads / "link").symlink_to("/etc")  # a link inside the folder that leads out of it
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    if isinstance(value, str):
        value = value.replace("UPLOADS", str(uploads))
    with pytest.raises(ValueError, match=r"^Photo \(image\) must be"):
        upload_path(value, "Photo (image)")
    inside = uploads / "abc" / "photo.png"
    assert upload_path({"path": str(inside), "meta": FILE_DATA}, "Photo (image)") == str(inside)
    assert upload_path(str(inside)) == str(inside)


# --- the source ----------------------------------------------------------------------------------

def test_the_source_never_unpickles_evaluates_or_fetches():
    """No pickle, no torch.load without weights_only=True, no eval/exec, and no HTTP client: the
    only network access is huggingface_hub's (hub_reachable and downloads of registry models)."""
    banned_modules = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "urllib.request", "requests",
                      "httpx", "aiohttp", "http.client", "socket", "yaml"}
    problems = []
    files = [ROOT / "app.py", *sorted((ROOT / "studio").rglob("*.py"))]
    assert len(files) > 50
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                problems += [f"{where} imports {a.name}" for a in node.names if a.name in banned_modules]
            elif isinstance(node, ast.ImportFrom) and node.module in banned_modules:
                problems.append(f"{where} imports from {node.module}")
            elif isinstance(node, ast.Call):
                problems += _call_problems(node, where)
    assert problems == []


def _call_problems(node: ast.Call, where: str) -> list[str]:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in node.keywords}
    problems = []
    if isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
        problems.append(f"{where} calls {name}()")
    if name in ("urlopen", "urlretrieve", "read_pickle", "unsafe_download"):
        problems.append(f"{where} calls {name}()")
    if owner == "torch" and name == "load":
        weights_only = keywords.get("weights_only")
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            problems.append(f"{where} calls torch.load without weights_only=True")
    allow = keywords.get("allow_pickle")
    if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
        problems.append(f"{where} passes allow_pickle")
    if "trust_remote_code" in keywords:
        problems.append(f"{where} passes trust_remote_code")
    return problems
