"""Whose presets and training runs a visitor sees (studio.owners): shared on a workstation, each
visitor's own once Studio is exposed (--user-data). Unit tests, TrainingJobs and PresetStore with
owners, and two API clients of one private Studio."""

from __future__ import annotations

import json
import re
import threading
import time
from types import SimpleNamespace

import pytest

from studio import presets as P
from studio.owners import Owners, is_private
from studio.training.jobs import TrainingJobs
from studio.ui.presets import PresetStore
from test_train_jobs import FakeTrainer, config, photos, wait_until_finished


def req(session: str | None = "s1", username: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session, username=username)


# -- who is who

def test_shared_mode_has_no_owners():
    owners = Owners(private=False)
    assert owners.of(req(username="alice")) is None and owners.of(req("other")) is None
    assert owners.bind(req(), None) is None  # no token is minted when nobody needs one


def test_a_page_keeps_its_owner_through_its_browser_token():
    owners = Owners(private=True)
    token = owners.bind(req("page-1"), None)  # a first visit gets a token for localStorage
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    first = owners.of(req("page-1"))
    assert first.startswith("browser-") and token not in first  # hashed: no token on disk
    # The same browser later (a reload, a restart): a new session, the same owner
    assert owners.bind(req("page-2"), token) == token and owners.of(req("page-2")) == first
    # Another browser, and a page whose token was tampered with, are someone else
    assert owners.of(req("page-3")) != first
    forged = owners.bind(req("page-4"), "../../etc")
    assert forged != "../../etc" and owners.of(req("page-4")) not in (first, None)
    owners.forget(req("page-2"))
    assert owners.of(req("page-2")) != first  # a closed page's session holds nothing any more


def test_a_login_is_one_owner_on_every_browser_and_api_sessions_are_their_own():
    owners = Owners(private=True)
    owners.bind(req("page-1"), owners.bind(req("page-0"), None))
    alice = owners.of(req("page-1", username="alice"))
    assert alice == owners.of(req("api-7", username="alice")) != owners.of(req("page-1", username="bob"))
    assert alice.startswith("user-") and "alice" not in alice
    assert owners.of(req("api-1")).startswith("session-") and owners.of(req("api-1")) != owners.of(req("api-2"))
    assert owners.of(None) != owners.of(None)  # no session at all: nobody's, so nothing is found


@pytest.mark.parametrize("mode, exposed, auth, private", [
    ("auto", False, False, False), ("auto", True, False, True), ("auto", False, True, True),
    ("shared", True, True, False), ("private", False, False, True)])
def test_user_data_modes(mode, exposed, auth, private):
    assert is_private(mode, exposed, auth) is private


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="--user-data must be one of auto, shared, private, got 'public'"):
        is_private("public", False, False)


# -- training runs and presets on disk

def test_each_owner_sees_resumes_and_discards_only_their_own_runs(manager, tmp_path):
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())
    job = jobs.start(config("rex"), photos(), owner="browser-a")
    assert wait_until_finished(jobs, job)["state"] == "stopped"
    assert (tmp_path / "training" / "browser-a" / "rex" / "job.json").is_file()
    assert [r["name"] for r in jobs.runs("browser-a")] == ["rex"]
    assert jobs.runs("browser-b") == [] and jobs.runs(None) == []  # nor the shared folder
    for action in (jobs.resume, jobs.discard):
        with pytest.raises(ValueError, match="no training run named 'rex'"):
            action("rex", "browser-b")
    assert (tmp_path / "training" / "browser-a" / "rex").is_dir()
    # The same name is free for another owner's own run folder
    other = jobs.start(config("rex"), photos(), owner="browser-b")
    wait_until_finished(jobs, other)
    assert sorted(p.parent.name for p in (tmp_path / "training").glob("*/rex")) == ["browser-a", "browser-b"]
    jobs.discard("rex", "browser-b")
    assert [r["name"] for r in jobs.runs("browser-a")] == ["rex"]


def test_a_visitor_cannot_overwrite_a_lora_another_made_nor_learn_their_job_id(manager, tmp_path):
    release = threading.Event()
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer(release=release))
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "taken.safetensors").write_bytes(b"someone's LoRA")
    with pytest.raises(ValueError, match="a LoRA named 'taken' is already in the library; pick another name"):
        jobs.start(config("taken"), photos(), owner="browser-b")
    assert (tmp_path / "loras" / "taken.safetensors").read_bytes() == b"someone's LoRA"
    job = jobs.start(config("busy"), photos(), owner="browser-a")
    try:
        with pytest.raises(ValueError, match="being trained by someone else; pick another name") as refused:
            jobs.start(config("busy"), photos(), owner="browser-b")
        assert job not in str(refused.value)
        with pytest.raises(ValueError, match=f"being trained by job {job}"):  # the owner is told which
            jobs.start(config("busy"), photos(), owner="browser-a")
    finally:
        release.set()
        wait_until_finished(jobs, job)


def test_a_restart_marks_every_owners_cut_short_runs_interrupted(manager, tmp_path):
    release = threading.Event()
    jobs = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer(release=release))
    job = jobs.start(config("cut"), photos(), owner="user-x")
    deadline = time.monotonic() + 10
    while jobs.status(job)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    after = TrainingJobs(manager, tmp_path / "loras", run=FakeTrainer())  # the next process
    release.set()
    assert [(r["name"], r["state"]) for r in after.runs("user-x")] == [("cut", "interrupted")]
    wait_until_finished(jobs, job)


def test_each_owner_sees_the_shipped_presets_and_only_their_own(tmp_path, manager):
    owners = Owners(private=True)
    store = PresetStore(manager.registry, tmp_path / "presets", owners=owners)
    shipped = set(P.list_presets(P.SHIPPED_DIR))
    (tmp_path / "presets").mkdir()
    mine = P.parse_preset({"schema_version": 1, "name": "Mine", "model": "tiny",
                           "txt2img": {"num_inference_steps": 3}}, manager.registry)
    (tmp_path / "presets" / "Root.json").write_text(P.preset_json(mine.model_copy(update={"name": "Root"})))
    path = store.save(mine, owner="browser-a")
    assert path.parent == tmp_path / "presets" / "browser-a"
    assert set(store.names("browser-a")) == shipped | {"Mine"}
    assert set(store.names("browser-b")) == shipped  # neither another's nor the shared folder's
    with pytest.raises(ValueError, match="unknown preset 'Mine'"):
        store.get("Mine", "browser-b")
    with pytest.raises(ValueError, match=r"a preset named 'Mine' already exists; pick another name"):
        store.save(mine, owner="browser-a")  # and the message names no server folder
    store.save(mine, owner="browser-b")  # another visitor may use the same name
    assert json.loads(path.read_text())["name"] == "Mine"


# -- two API clients of one private Studio (the `private_app` fixture, tests/conftest.py)

def test_two_api_clients_see_only_their_own_runs_and_presets(private_app, manager, tmp_path):
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from test_train_api import TINY_RUN

    url, tmp = private_app
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    # A stopped run of alice's API session, as its own /train_lora would have left it
    owner = Owners(private=True).of(req(alice.session_hash))
    writer = TrainingJobs(manager, tmp / "loras", run=FakeTrainer())
    wait_until_finished(writer, writer.start(config("alices-dog"), photos(), owner=owner))
    assert [(r["name"], r["state"]) for r in alice.predict(api_name="/training_runs")] == [("alices-dog", "stopped")]
    assert bob.predict(api_name="/training_runs") == []
    for endpoint in ("/resume_training", "/discard_training_run"):
        with pytest.raises(Exception, match="no training run named 'alices-dog'"):
            bob.predict(name="alices-dog", api_name=endpoint)
    # The library is everyone's: bob may not train over a LoRA he did not make
    (tmp / "loras").mkdir(exist_ok=True)
    (tmp / "loras" / "alices-dog.safetensors").write_bytes(b"alice's LoRA")
    files = []
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        files.append(handle_file(str(tmp_path / f"{i}.png")))
    with pytest.raises(Exception, match="a LoRA named 'alices-dog' is already in the library"):
        bob.predict(images=files, **{**TINY_RUN, "name": "alices-dog"}, api_name="/train_lora")
    assert (tmp / "loras" / "alices-dog.safetensors").read_bytes() == b"alice's LoRA"
    assert list((tmp / "training").glob("*/alices-dog")) == [tmp / "training" / owner / "alices-dog"]
    alice.predict(name="alices-dog", api_name="/discard_training_run")  # her own: gone
    assert alice.predict(api_name="/training_runs") == [] and not (tmp / "training" / owner / "alices-dog").exists()
    # The folder's own presets (written before Studio was exposed) are nobody's to see
    for client in (alice, bob):
        names = {p["name"] for p in client.predict(api_name="/presets")}
        assert "Admin look" not in names and names == set(P.list_presets(P.SHIPPED_DIR))
        with pytest.raises(Exception, match="unknown preset 'Admin look'"):
            client.predict(name="Admin look", api_name="/preset")
