"""The project's own promises: CI runs the README's test command, nothing heavy at import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2, "README must start with the install-and-start and the test command"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_requirements_pin_the_local_torch_wheels():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.14.1" in lines and "torchvision==0.29.1" in lines


def test_importing_the_app_is_light():
    code = "import sys, app, studio.ui, studio.models.manager, studio.pipelines.txt2img; " \
           "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def front_matter(readme: str) -> dict:
    """The YAML block at the very top of the README: a Hugging Face Space's configuration."""
    import yaml

    assert readme.startswith("---\n"), "README.md must start with the Space's front matter (---)"
    return yaml.safe_load(readme[4:readme.index("\n---\n", 4)])


def test_the_readme_configures_a_gradio_space():
    import json

    meta = front_matter((ROOT / "README.md").read_text())
    required = {"title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "python_version",
                "suggested_hardware", "models", "short_description", "pinned", "license"}
    assert required <= set(meta), f"missing {required - set(meta)}"
    assert (meta["sdk"], meta["app_file"], meta["python_version"]) == ("gradio", "app.py", "3.11")
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert meta["sdk_version"] == pins["gradio"]  # the Space runs the gradio the app is tested on
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    registry = json.loads((ROOT / "presets" / "models.json").read_text())
    repos = {m["repo_id"] for m in registry["models"]}
    assert meta["models"] and set(meta["models"]) <= repos, set(meta["models"]) - repos
