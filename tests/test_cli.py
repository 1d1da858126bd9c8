"""The command line: usage errors name the choices; help for every option."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_every_option_has_help():
    sys.path.insert(0, str(ROOT))
    from app import parse_args

    parser, _ = parse_args([])
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) == 17
    assert all(a.help and len(a.help) > 15 for a in options), [a.dest for a in options if not a.help]
    assert "port to listen on" in run_app("--help").stdout


def test_an_unknown_model_is_a_usage_error_listing_base_models():
    done = run_app("--model", "nonexistent")
    assert done.returncode == 2
    assert "usage: app.py" in done.stderr and "Traceback" not in done.stderr
    assert "--model must be a base model, one of sdxl-base, sdxl-turbo, sd15" in done.stderr
    assert "sdxl-vae-fp16-fix" not in done.stderr.split("one of", 1)[1]  # only models one can start with


def test_a_vae_or_controlnet_is_not_a_startup_model():
    for name in ("sdxl-vae-fp16-fix", "controlnet-depth-sdxl"):
        done = run_app("--model", name)
        assert done.returncode == 2 and f"got {name!r}" in done.stderr, done.stderr


def test_a_nonpositive_upscale_limit_is_a_usage_error():
    done = run_app("--upscale-max-pixels", "0")
    assert done.returncode == 2 and "--upscale-max-pixels must be a positive number of pixels, got 0" in done.stderr


def test_bad_serving_options_are_usage_errors_that_never_echo_a_password():
    done = run_app("--max-file-size", "huge")
    assert done.returncode == 2
    assert "--max-file-size: expected a positive size such as 200mb, 64kb or 1gb, got 'huge'" in done.stderr
    done = run_app("--auth", "alice:pw-secret-1", "--auth", "pw-secret-2")
    assert done.returncode == 2 and "--auth #2 must be USER:PASSWORD, got an entry without ':'" in done.stderr
    assert "pw-secret" not in done.stderr + done.stdout and "Traceback" not in done.stderr
