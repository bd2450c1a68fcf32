"""Locust load test of both paper endpoints with real PNG uploads.

    locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s --host http://127.0.0.1:8000

The host is nginx (or anything serving ``/detect/...``); ``--host`` or ``MEDFAKEDET_URL`` sets it.
Every response is checked for status 200 and the documented schema (``medfakedet.schema``);
anything else is a failure with the server's message.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from locust import HttpUser, between, task

# locust puts this file's folder on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import sample_images  # noqa: E402
from medfakedet.schema import error_message, result_problem  # noqa: E402

IMAGES = sample_images(count=max(1, int(os.environ.get("MEDFAKEDET_IMAGES", "16"))))
BRAIN = [im for im in IMAGES if im.organ == "brain"] or IMAGES


class MedFakeDetUser(HttpUser):
    """A client uploading scans: mostly classification, some brain localization."""

    host = os.environ.get("MEDFAKEDET_URL", "http://127.0.0.1:8000")
    wait_time = between(0.05, 0.25)

    def _post(self, endpoint: str, image, form: dict[str, str] | None = None) -> None:
        with self.client.post(
            f"/detect/{endpoint}",
            files={"image": (image.name, image.data, "image/png")},
            data=form or {},
            name=f"/detect/{endpoint}",
            catch_response=True,
        ) as response:
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code != 200:
                message = error_message(body) or response.text[:200]
                response.failure(f"HTTP {response.status_code}: {message}")
                return
            if body is None:
                response.failure("the answer is not JSON")
                return
            problem = result_problem(endpoint, body)
            if problem:
                response.failure(problem)
            else:
                response.success()

    @task(3)
    def synthesis8(self) -> None:
        self._post("synthesis8", random.choice(IMAGES))

    @task(1)
    def manipulation_density(self) -> None:
        thr = random.choice(("0.2", "0.28", "0.4"))
        self._post("manipulation_density", random.choice(BRAIN), {"thr": thr, "min_area": "20"})
