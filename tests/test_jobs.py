"""Following a job from the page: progress with previews, waiting messages, and stopping when the page goes."""

from __future__ import annotations

import threading

from studio.pipelines import txt2img
from studio.pipelines.txt2img import Txt2ImgRequest
from studio.ui.jobs import stream_job

REQUEST = Txt2ImgRequest(prompt="a fox", model="tiny", width=64, height=64, num_inference_steps=6,
                         scheduler="Euler", seed=1)


def test_previews_arrive_before_the_result(manager):
    events = list(stream_job(txt2img.run, REQUEST, manager, threading.Event(), every_s=0))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    steps = [payload for kind, payload in events if kind == "step"]
    assert [event.step for event, _ in steps] == [1, 2, 3, 4, 5, 6]
    previews = [images for _, images in steps if images]
    assert len(previews) == 5  # every step but the last, which the final image answers
    assert all(len(images) == 1 and images[0].size == (256, 256) for images in previews)  # upscaled for the page
    assert previews[0][0].tobytes() != previews[-1][0].tobytes()  # they follow the denoising
    result = events[-1][1]
    assert result.steps_done == 6 and not result.interrupted


def test_a_job_waits_with_a_message_while_a_training_run_holds_the_gpu(manager):
    training = manager.lease(None, exclusive=True, purpose="a training run")
    events, seen_wait = [], threading.Event()

    def follow():
        for kind, payload in stream_job(txt2img.run, REQUEST, manager, threading.Event(), every_s=0):
            events.append((kind, payload))
            if kind == "wait":
                seen_wait.set()

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        assert seen_wait.wait(10), "no waiting message while the GPU was held"
        assert not any(kind == "done" for kind, _ in events)  # it really waited
    finally:
        training.release()
    thread.join(60)
    message = next(payload for kind, payload in events if kind == "wait")
    assert "training run" in message and "number 1 in line" in message
    assert events[-1][0] == "done"


def test_a_page_that_goes_away_stops_the_job(manager):
    flag = threading.Event()
    stream = stream_job(txt2img.run, REQUEST.replace(num_inference_steps=40), manager, flag, every_s=0)
    kind, _ = next(stream)
    assert kind == "step"
    stream.close()  # what Gradio does when the page is closed
    assert flag.is_set()
    with manager.lease("tiny") as lease:  # the job ended and gave the GPU back
        assert lease.pipe is not None


def test_stop_while_waiting_gives_up_the_place_in_line(manager):
    from studio.results import Stopped

    training = manager.lease(None, exclusive=True, purpose="a training run")
    flag, outcome = threading.Event(), {}

    def follow():
        try:
            for kind, _ in stream_job(txt2img.run, REQUEST, manager, flag, every_s=0):
                if kind == "wait":
                    flag.set()  # the user presses Stop while the job waits
        except Stopped as exc:
            outcome["stopped"] = str(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    thread.join(30)
    try:
        assert outcome == {"stopped": "Stopped while waiting for the GPU; nothing was made."}
    finally:
        training.release()
    assert manager.loaded() == []  # the stopped job loaded nothing
    with manager.lease("tiny") as lease:  # and nobody is left in line ahead of the next job
        assert lease.held
