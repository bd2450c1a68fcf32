"""``medfakedet scan --server``: files POSTed to a running MedFakeDet service, several at once.

A bounded pool of ``concurrency`` requests is kept in flight, so the server's dynamic batching
(TorchServe: up to 8 requests per batch) has something to batch; rows come back as each file
finishes, not in input order. Transient failures (no connection, a timeout, HTTP 429, 502, 503,
504) are retried with exponential backoff and jitter; a file that still fails is an error row and
the run goes on. A server that cannot be reached at all is a usage error before anything is sent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from medfakedet.scan import ScanRow, UsageError, keep_visuals, wants_localization
from medfakedet.schema import ResultError, error_message, read_result

#: HTTP answers worth another try: rate limited, or the server (or what is behind it) is
#: briefly unavailable (TorchServe answers 503 while a worker restarts).
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 4
BACKOFF_S = 0.5  # first wait; doubles each try, plus up to 50% jitter


class ServerScanner:
    """POSTs files to ``url`` (nginx, or anything serving ``/detect/...``), ``concurrency`` at a
    time. ``visuals``: ask for a preview and a heatmap per file (HTML report)."""

    def __init__(
        self,
        url: str,
        *,
        localize: str,
        thr: float | None = None,
        min_area: int | None = None,
        timeout: float = 60.0,
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = DEFAULT_RETRIES,
        token: str | None = None,
        visuals: bool = False,
    ) -> None:
        import requests

        self.requests = requests
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--server must be an http(s) URL, got {url!r}")
        if concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
        self.localize = localize
        self.timeout = timeout
        self.concurrency = concurrency
        self.retries = max(0, retries)
        self.visuals = visuals
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.form: dict[str, str] = {}
        if thr is not None:
            self.form["thr"] = repr(float(thr))
        if min_area is not None:
            self.form["min_area"] = str(int(min_area))
        if visuals:
            self.form["return_density"] = "true"
        self._local = threading.local()  # one HTTP session (keep-alive) per worker thread
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0  # the most requests that were open at the same moment
        self.retried = 0

    # ------------------------------------------------------------------------------ HTTP
    def _session(self):
        if not hasattr(self._local, "session"):
            self._local.session = self.requests.Session()
        return self._local.session

    def check_reachable(self) -> None:
        """GET /ping once; only a server that cannot be reached at all stops the run."""
        try:
            self._session().get(f"{self.url}/ping", headers=self.headers, timeout=self.timeout)
        except self.requests.RequestException as e:
            raise UsageError(f"cannot reach the server at {self.url}: {e}") from None

    def _send(self, path: str, name: str, data: bytes, form: dict[str, str]):
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self._session().post(
                f"{self.url}{path}",
                files={"image": (name, data, "application/octet-stream")},
                data=form,
                headers=self.headers,
                timeout=self.timeout,
            )
        finally:
            with self._lock:
                self.in_flight -= 1

    def _post(self, path: str, name: str, data: bytes, form: dict[str, str]) -> dict | str:
        """One request with retries: the JSON result, or an error message (str)."""
        endpoint = path.rsplit("/", 1)[-1]
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(BACKOFF_S * 2 ** (attempt - 1) * (1 + random.random() / 2))
            try:
                r = self._send(path, name, data, form)
            except self.requests.Timeout:
                problem = f"{endpoint}: no answer within {self.timeout:g} s"
                continue
            except self.requests.ConnectionError as e:
                problem = f"{endpoint}: connection failed: {e}"
                continue
            try:
                body = r.json()
            except ValueError:
                body = None
            if r.status_code == 200 and isinstance(body, dict):
                return body
            message = error_message(body) or r.text.strip()[:200] or r.reason
            problem = f"{endpoint}: HTTP {r.status_code}: {message}"
            if r.status_code not in TRANSIENT_STATUS:
                return problem
        tries = self.retries + 1
        return f"{problem} (after {tries} tr{'ies' if tries > 1 else 'y'})"

    # ------------------------------------------------------------------------------ files
    def _result(self, row: ScanRow, path: str, data: bytes, form: dict, heatmap: str):
        name = Path(row.file).name
        body = self._post(path, name, data, form)
        if isinstance(body, str):
            return body
        try:
            return read_result(path.split("/")[-1], keep_visuals(row, body, heatmap))
        except ResultError as e:
            return f"unexpected answer from {self.url}: {e}"

    def scan_one(self, path: Path) -> ScanRow:
        """Both models for one file (the localizer where ``localize`` asks for it)."""
        import hashlib

        row = ScanRow(file=str(path))
        try:
            data = path.read_bytes()
        except OSError as e:
            row.error = f"cannot read the file: {e.strerror or e}"
            return row
        row.sha256 = hashlib.sha256(data).hexdigest()
        # The HTML report asks the explanation endpoint: the prediction plus its Grad-CAM.
        route = "/explanations/synthesis8" if self.visuals else "/detect/synthesis8"
        form = {"preview": "true"} if self.visuals else {}
        result = self._result(row, route, data, form, "Grad-CAM")
        if isinstance(result, str):
            row.error = result
            return row
        row.synthesis = result
        if wants_localization(self.localize, result):
            loc = self._result(row, "/detect/manipulation_density", data, self.form, "density")
            if isinstance(loc, str):
                row.error = loc
            else:
                row.localization = loc
                row.image = {"width": loc.image_size.width, "height": loc.image_size.height}
        return row

    def scan(self, files: Sequence[Path]) -> Iterator[ScanRow]:
        """Rows as files finish; at most ``concurrency`` files are in the works at once."""
        self.check_reachable()
        pending = iter(files)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="scan") as pool:
            running: set[Future] = set()
            try:
                while True:
                    for path in pending:
                        running.add(pool.submit(self.scan_one, path))
                        if len(running) >= self.concurrency:
                            break
                    if not running:
                        return
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:
                for future in running:  # interrupted: drop what has not started
                    future.cancel()
