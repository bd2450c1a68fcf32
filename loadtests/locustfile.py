"""Locust load test of the MedFakeDet endpoints with real uploads.

    make loadtest                            # ramp + hold; reports in loadtests/reports/
    MEDFAKEDET_IMAGES=~/scans make loadtest  # a folder of real scans instead of the mix
    locust -f loadtests/locustfile.py --headless --host https://medfakedet.example.org \
        --csv loadtests/reports/run --html loadtests/reports/run.html

The host is nginx, a cluster's ingress or anything serving ``/detect/...`` (``--host`` or
``MEDFAKEDET_URL``); ``MEDFAKEDET_TOKEN`` is sent as ``Authorization: Bearer``.

Images (:func:`loadtests.load_images`): ``MEDFAKEDET_IMAGES=DIR`` takes the scans of a folder
(recursively, up to ``MEDFAKEDET_IMAGES_LIMIT`` = 256), else a procedural mix of 8-bit PNG,
JPEG, 16-bit PNG, 16-bit DICOM and large chest X-rays.

Users, weighted like a real front end: :class:`ClassifyUser` (multipart classification, the
bulk), :class:`LocalizeUser` (brain localization with form parameters), :class:`RawBodyUser`
(``curl --data-binary``-style raw uploads) and :class:`ExplainUser` (Grad-CAM, rare and costly).
Tasks are tagged by endpoint (``synthesis8``, ``manipulation_density``, ``explanations``) and by
kind (``multipart``, ``raw``): ``--tags raw`` or ``--exclude-tags explanations`` pick a subset
(``make loadtest LOADTEST_ARGS="--tags synthesis8"``); user classes left without a task are not
spawned.

Load shape (:class:`RampAndHold`): ramp up to ``MEDFAKEDET_USERS`` (16) users over
``MEDFAKEDET_RAMP_S`` (20 s), hold for ``MEDFAKEDET_HOLD_S`` (40 s), stop. Every answer is
checked: status 200 and the documented schema (:mod:`medfakedet.schema`); anything else is a
failure with the server's message.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import LoadTestShape, between, events, tag, task
from locust.contrib.fasthttp import FastHttpUser

# locust puts this file's folder on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import load_images  # noqa: E402
from medfakedet.schema import (  # noqa: E402
    Synthesis8Explained,
    error_message,
    result_problem,
)

IMAGES = load_images()
BRAIN = [im for im in IMAGES if im.organ == "brain"] or IMAGES
TOKEN = os.environ.get("MEDFAKEDET_TOKEN", "").strip()
HOST = os.environ.get("MEDFAKEDET_URL", "http://127.0.0.1:8000")


def _problem(path: str, body) -> str | None:
    """None when ``body`` is the documented answer of ``path``, else its first problem."""
    if path.startswith("/explanations/"):
        try:
            Synthesis8Explained.model_validate(body)
        except ValueError as e:
            return f"explanations: {str(e).splitlines()[0]}"
        return None
    return result_problem(path.rsplit("/", 1)[-1], body)


class _MedFakeDetUser(FastHttpUser):
    """Shared: the host, the token, and one checked POST."""

    abstract = True
    host = HOST
    wait_time = between(0.05, 0.25)
    network_timeout = 120.0
    connection_timeout = 10.0

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _check(self, response, path: str) -> None:
        """Status 200 and the documented result of ``path``; else a failure that says why."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200:
            message = error_message(body) or (response.text or "")[:200]
            response.failure(f"HTTP {response.status_code}: {message}")
        elif body is None:
            response.failure("the answer is not JSON")
        elif problem := _problem(path, body):
            response.failure(problem)
        else:
            response.success()

    def post_form(self, path: str, image, form: dict[str, str] | None = None) -> None:
        with self.client.post(
            path,
            files={"image": (image.name, image.data, image.content_type)},
            data=form or {},
            headers=self._headers(),
            name=f"{path} [{image.kind}]",
            catch_response=True,
        ) as response:
            self._check(response, path)

    def post_raw(self, path: str, image) -> None:
        with self.client.post(
            path,
            data=image.data,
            headers=self._headers(image.content_type),
            name=f"{path} raw [{image.kind}]",
            catch_response=True,
        ) as response:
            self._check(response, path)


class ClassifyUser(_MedFakeDetUser):
    """The bulk of the traffic: one image classified, as the page and the CLI send it."""

    weight = 6

    @tag("synthesis8", "multipart")
    @task
    def synthesis8(self) -> None:
        self.post_form("/detect/synthesis8", random.choice(IMAGES))


class LocalizeUser(_MedFakeDetUser):
    """Brain images through the localizer, with the page's parameters now and then."""

    weight = 3

    @tag("manipulation_density", "multipart")
    @task(3)
    def calibrated(self) -> None:
        self.post_form("/detect/manipulation_density", random.choice(BRAIN))

    @tag("manipulation_density", "multipart")
    @task(1)
    def with_parameters(self) -> None:
        form = {"thr": random.choice(("0.2", "0.3", "0.4")), "min_area": "20"}
        self.post_form("/detect/manipulation_density", random.choice(BRAIN), form)


class RawBodyUser(_MedFakeDetUser):
    """Scripts posting the file as the raw body (``curl --data-binary @scan.dcm``)."""

    weight = 2

    @tag("synthesis8", "raw")
    @task(2)
    def synthesis8_raw(self) -> None:
        self.post_raw("/detect/synthesis8", random.choice(IMAGES))

    @tag("manipulation_density", "raw")
    @task(1)
    def density_raw(self) -> None:
        self.post_raw("/detect/manipulation_density", random.choice(BRAIN))


class ExplainUser(_MedFakeDetUser):
    """Grad-CAM: rare (one gradient pass per image), but the page asks for it."""

    weight = 1
    wait_time = between(1.0, 3.0)

    @tag("explanations", "multipart")
    @task
    def gradcam(self) -> None:
        self.post_form("/explanations/synthesis8", random.choice(IMAGES))


@events.test_start.add_listener
def drop_users_without_tasks(environment, **_kwargs) -> None:
    """``--tags`` / ``--exclude-tags`` can leave a user class without a task (``--tags
    synthesis8``: LocalizeUser); locust would still spawn it, and every spawn would count as an
    exception ("No tasks defined") and fail the run. Tasks are filtered just before this event."""
    kept = [user for user in environment.user_classes if user.tasks]
    if kept:
        environment.user_classes[:] = kept


class RampAndHold(LoadTestShape):
    """Ramp linearly to ``users`` over ``ramp_s``, hold ``hold_s``, then stop."""

    users = int(os.environ.get("MEDFAKEDET_USERS", "16"))
    ramp_s = float(os.environ.get("MEDFAKEDET_RAMP_S", "20"))
    hold_s = float(os.environ.get("MEDFAKEDET_HOLD_S", "40"))

    def tick(self):
        t = self.get_run_time()
        if t > self.ramp_s + self.hold_s:
            return None
        if t < self.ramp_s:
            now = max(1, round(self.users * t / self.ramp_s))
            return now, max(1.0, self.users / max(self.ramp_s, 1.0))
        return self.users, float(self.users)
