"""Draft requests, the draft-mode toggle, and live previews that give way to newer edits."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from studio.pipelines import txt2img
from studio.pipelines.drafts import draft_partner, draft_request
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.ui.jobs import Latest
from studio.ui.preview import live_preview

REQUEST = Txt2ImgRequest(prompt="a fox", negative_prompt="", width=96, height=64, num_inference_steps=2,
                         guidance_scale=5.0, seed=5, batch_size=2, scheduler="Euler", model="tiny")


def test_draft_request_uses_the_draft_model_small(registry):
    request = Txt2ImgRequest(prompt="a fox", width=1344, height=768, seed=-1, batch_size=4, camera_pitch=10.0)
    draft = draft_request(request, registry)
    lightning = registry.get("sdxl-lightning").defaults
    assert (draft.model, draft.width, draft.height) == ("sdxl-lightning", 512, 288)
    assert (draft.num_inference_steps, draft.guidance_scale, draft.scheduler) == (
        lightning.num_inference_steps, lightning.guidance_scale, lightning.scheduler) == (4, 0.0, "Euler trailing")
    assert draft.batch_size == 1 and draft.seed == 0  # a fixed seed: previews change only with the edits
    assert draft.camera_pitch == 10.0 and draft.prompt == "a fox"  # the camera and prompt carry over
    draft.validate(registry)
    tiny = draft_request(Txt2ImgRequest(prompt="a fox", model="tiny", width=64, height=64, seed=9), registry)
    assert (tiny.model, tiny.width, tiny.num_inference_steps, tiny.seed) == ("tiny-fast", 64, 1, 9)
    turbo = draft_request(Txt2ImgRequest(prompt="a fox", model="sdxl-turbo", width=512, height=512), registry)
    assert (turbo.model, turbo.num_inference_steps) == ("sdxl-turbo", 1)  # already a one-step model


def test_draft_mode_toggles_between_quality_and_draft(registry):
    assert draft_partner(registry, "sdxl-base") == "sdxl-lightning"
    assert draft_partner(registry, "sdxl-lightning") == "sdxl-base"
    assert draft_partner(registry, "tiny") == "tiny-fast" and draft_partner(registry, "tiny-fast") == "tiny"
    assert draft_partner(registry, "sdxl-turbo") is None


def test_a_one_step_preview(manager):
    result = live_preview(REQUEST, manager, Latest(), "s", token=0, debounce_s=0)
    assert result.request.model == "tiny-fast" and result.steps_done == 1
    assert len(result.images) == 1 and result.images[0].size == (96, 64)


def test_an_edit_during_the_debounce_skips_the_preview(manager):
    latest, out = Latest(), {}
    token = latest.bump("s")  # the edit this preview is for
    thread = threading.Thread(target=lambda: out.update(result=live_preview(REQUEST, manager, latest, "s", token, 0.5)))
    thread.start()
    latest.bump("s")  # the user typed again
    latest.bump("other-tab")  # another session's edits change nothing here
    thread.join(timeout=30)
    assert out == {"result": None}
    assert manager.loaded() == []  # nothing was generated


def test_an_edit_during_the_run_cancels_the_preview(manager, monkeypatch):
    latest, runs = Latest(), []
    real_run = txt2img.run

    def run_with_an_edit_at_step_1(request, models, on_step):
        def edited(event):
            if event.step == 1:
                latest.bump("s")  # an edit arrives while step 1 is done
            return on_step(event)

        runs.append(real_run(request, models, on_step=edited))
        return runs[-1]

    monkeypatch.setattr(txt2img, "run", run_with_an_edit_at_step_1)
    request = dataclasses.replace(REQUEST, model="tiny-sd15")  # no draft model: a 2-step draft of itself
    assert live_preview(request, manager, latest, "s", token=0, debounce_s=0) is None
    (run,) = runs
    assert run.interrupted and run.steps_done == 1 < run.total_steps


def test_a_preview_queued_behind_newer_edits_never_runs(manager):
    latest = Latest()
    old = latest.bump("s")
    latest.bump("s")  # typed again while the first preview waited in the queue
    assert live_preview(REQUEST, manager, latest, "s", old, debounce_s=0) is None
    assert manager.loaded() == []


def test_a_preview_of_invalid_settings_is_an_error(manager):
    with pytest.raises(ValueError, match=r"Prompt \(prompt\) must be a string"):
        live_preview(dataclasses.replace(REQUEST, prompt=None), manager, Latest(), "s", token=0, debounce_s=0)


def test_drafts_stay_within_the_draft_models_sizes(registry):
    draft = draft_request(Txt2ImgRequest(prompt="x", model="tiny", width=512, height=64), registry)
    assert (draft.width, draft.height) == (512, 64)  # 64 px is the tiny model's floor


def test_an_edit_during_a_one_step_draft_drops_it(manager, monkeypatch):
    """A one-step draft cannot be interrupted (its only step is also its last): the check after
    the run is what keeps a superseded draft off the page."""
    latest, runs = Latest(), []
    real_run = txt2img.run

    def run_with_an_edit_at_step_1(request, models, on_step):
        def edited(event):
            latest.bump("s")  # the user types while the draft's only step runs
            return on_step(event)

        runs.append(real_run(request, models, on_step=edited))
        return runs[-1]

    monkeypatch.setattr(txt2img, "run", run_with_an_edit_at_step_1)
    assert live_preview(REQUEST, manager, latest, "s", token=0, debounce_s=0) is None
    (run,) = runs
    assert run.request.model == "tiny-fast" and run.total_steps == 1 and not run.interrupted
