"""Hostile HTTP requests against the front door, generated and seeded, with valid ones to mix in.

:func:`hostile_requests` yields :class:`Probe` objects of about 60 kinds: broken and bomb files,
bad DICOM, bad form fields, bad JSON bodies, malformed multipart and bad HTTP. :func:`send`
sends one over a raw socket (so that a body can be as broken as wanted) and returns the status,
the Content-Type and the body. Used by ``test_hostile.py`` and ``scripts/fault_injection.py``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import hostile_inputs as h
import numpy as np
import psutil
import requests

S8, MD = "/detect/synthesis8", "/detect/manipulation_density"
BOX = (40, 32, 88, 80)  # x1, y1, x2, y2 of the bright region of valid images


@dataclass
class Probe:
    """One request: what it is, where it goes, its headers and body."""

    kind: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    seconds: float = 0.0

    def json(self):
        return json.loads(self.body, parse_constant=_no_constant)


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def send(base_url: str, probe: Probe, timeout: float = 120.0) -> Answer:
    """Send ``probe`` as it is (no client-side validation) and read the answer."""
    host, port = base_url.removeprefix("http://").split(":")
    if probe.method == "RAW":  # bytes that are not HTTP at all
        return _send_raw(host, int(port), probe.body, timeout)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(probe.method, probe.path, skip_accept_encoding=True)
        headers = {"Content-Length": str(len(probe.body)), **probe.headers}
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(probe.body if probe.method == "POST" else None)
        r = conn.getresponse()
        return Answer(r.status, r.getheader("Content-Type") or "", r.read())
    finally:
        conn.close()


def _send_raw(host: str, port: int, data: bytes, timeout: float) -> Answer:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(int(lines[0].split()[1]), headers.get("Content-Type", ""), body)


# ------------------------------------------------------------------------------- builders
def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> Probe:
    """A multipart/form-data body: (name, filename or None, value) per part."""
    parts = []
    for name, filename, value in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value)
    body = b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return Probe("", "", body, headers)


def upload(kind: str, path: str, data: bytes, **fields: bytes) -> Probe:
    probe = multipart([("image", "scan.bin", data), *[(k, None, v) for k, v in fields.items()]])
    probe.kind, probe.path = kind, path
    return probe


def json_probe(kind: str, path: str, text: str | bytes) -> Probe:
    body = text.encode() if isinstance(text, str) else text
    return Probe(kind, path, body, {"Content-Type": "application/json"})


def rect_image(seed: int) -> bytes:
    """A valid upload: a noisy dark 128x128 PNG with one bright rectangle at BOX."""
    img = np.random.default_rng(seed).integers(13, 38, (128, 128)).astype(np.uint8)
    x1, y1, x2, y2 = BOX
    img[y1:y2, x1:x2] = 230
    return h.png_bytes(img)


def valid_request(seed: int) -> Probe:
    path = MD if seed % 2 else S8
    return upload("valid", path, rect_image(seed))


def check_valid(probe: Probe, answer: Answer) -> None:
    """A valid request's answer: 200, JSON, and the right content."""
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert answer.content_type.startswith("application/json"), answer.content_type
    body = answer.json()
    if probe.path == MD:
        (box,) = body["boxes"]
        got = (box["x1"], box["y1"], box["x2"], box["y2"])
        assert np.allclose(got, BOX, atol=2), got
    else:
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4


# ------------------------------------------------------------------------------ the kinds
def _file_kinds(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    good_png = rect_image(rng.randrange(10**6))
    good_jpeg = h.jpeg_bytes(np.full((64, 64), 90, np.uint8))
    yield "empty file", b""
    yield "text file", b"hello, this is not an image\n" * rng.randrange(1, 50)
    yield "random bytes", rng.randbytes(rng.randrange(1, 5000))
    yield "truncated PNG", good_png[: rng.randrange(8, len(good_png) - 12)]
    yield "truncated JPEG", good_jpeg[: rng.randrange(4, len(good_jpeg) - 4)]
    yield "PNG header only, huge", h.png_declaring(rng.randrange(9000, 10**6), 100000)
    yield "PNG zero bomb 9000x9000", PNG_BOMB_9000
    yield "TIFF declaring 60000x60000", h.tiff_declaring(60000, 60000)
    yield "GIF", h.gif_bytes()
    yield "PNG with garbage IDAT", good_png[:40] + rng.randbytes(200) + good_png[-12:]
    yield "DICOM deflate bomb", DEFLATE_BOMB
    yield "DICOM RLE bomb", RLE_BOMB
    yield "DICOM JPEG frame size mismatch", JPEG_MISMATCH
    yield "DICOM JPEG lossless (no decoder)", LOSSLESS
    yield "DICOM header only", h.dicom_header_only(256, 256)
    yield "DICOM 20000x20000", h.dicom_header_only(20000, 20000)
    yield "DICM magic then garbage", bytes(128) + b"DICM" + rng.randbytes(300)
    yield "flipped bits in a PNG", _flip(good_png, rng)


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(8):
        out[rng.randrange(16, len(out))] ^= 1 << rng.randrange(8)
    out[16:24] = (0xFFFFFFFF).to_bytes(4, "big") * 2  # and an impossible size, so it is bad
    return bytes(out)


PNG_BOMB_9000 = h.png_zero_bomb(9000)
DEFLATE_BOMB = h.dicom_deflate_bomb(200)
RLE_BOMB = h.dicom_rle_bomb()
JPEG_MISMATCH = h.dicom_jpeg_mismatch()
LOSSLESS = h.dicom_lossless_jpeg()
#: name -> (bytes, the status it must get): refused bombs, and two that are legal and decoded
#: at reduced scale.
BOMBS = {
    "PNG 9000x9000 zeros (79 KB)": (PNG_BOMB_9000, 413),
    "PNG 8000x8000 zeros (62 KB)": (h.png_zero_bomb(8000), 200),
    "JPEG declaring 8000x8000 (333 B)": (h.jpeg_declaring(8000, 8000), 200),
    "DICOM deflate to 200 MiB (204 KB)": (DEFLATE_BOMB, 415),
    "DICOM RLE 64x (400 KB)": (RLE_BOMB, 400),
    "DICOM JPEG frame 4000x4000 in 64x64": (JPEG_MISMATCH, 400),
}

_BAD_FIELDS = {
    "thr": [b"1" * 400, b"nan", b"inf", b"-1", b"2", b"abc", b"0x10", b"1e999", b"\xff\xfe"],
    "min_area": [b"-5", b"3.5", b"1e400", b"x", b"99999999", b"9" * 400],
    "return_density": [b"maybe", b"2", b"\x00"],
    "preview": [b"perhaps", b"-1", b"\xff"],
    "foo": [b"1"],
}


def _json_kinds(image_b64: str) -> list[tuple[str, str]]:
    deep = '{"a":' * 3000 + "1" + "}" * 3000
    return [
        ("JSON image not base64", '{"image": "!!!not base64!!!"}'),
        ("JSON image a number", '{"image": 5}'),
        ("JSON image an object", '{"image": {"a": 1}}'),
        ("JSON image an array", '{"image": [1, 2, 3]}'),
        ("JSON image null", '{"image": null}'),
        ("JSON body an array", "[1, 2, 3]"),
        ("JSON body a string", '"hello"'),
        ("JSON body a number", "12345"),
        ("JSON body empty object", "{}"),
        ("JSON thr 400 digits", f'{{"image": "{image_b64}", "thr": {"1" * 400}}}'),
        ("JSON thr NaN", f'{{"image": "{image_b64}", "thr": NaN}}'),
        ("JSON thr Infinity", f'{{"image": "{image_b64}", "thr": Infinity}}'),
        ("JSON thr true", f'{{"image": "{image_b64}", "thr": true}}'),
        ("JSON thr object", f'{{"image": "{image_b64}", "thr": {{"x": 1}}}}'),
        ("JSON min_area array", f'{{"image": "{image_b64}", "min_area": [1]}}'),
        ("JSON min_area huge", f'{{"image": "{image_b64}", "min_area": 1e308}}'),
        ("JSON unknown field", f'{{"image": "{image_b64}", "zzz": 1}}'),
        ("JSON two images", f'{{"image": "{image_b64}", "file": "{image_b64}"}}'),
        ("JSON nested 3000 deep", deep),
        ("JSON syntax error", '{"image": '),
    ]


def _multipart_kinds(image: bytes, rng: random.Random) -> list[Probe]:
    good = multipart([("image", "a.png", image)])
    empty_name = multipart([("", "a.png", image)])
    broken = Probe("", "", good.body, {"Content-Type": "multipart/form-data; boundary=other"})
    no_boundary = Probe("", "", good.body, {"Content-Type": "multipart/form-data"})
    unterminated = Probe("", "", good.body[: -len("--b0undary--\r\n") - 2], dict(good.headers))
    no_disposition = Probe(
        "", "", b"--b0undary\r\nX-Foo: bar\r\n\r\n" + image + b"\r\n--b0undary--\r\n",
        dict(good.headers),
    )  # fmt: skip
    many = multipart([("image", "a.png", image)] + [(f"f{i}", None, b"1") for i in range(2000)])
    only_fields = multipart([("thr", None, b"0.3")])
    return [
        _named(empty_name, "multipart empty part name"),
        _named(broken, "multipart boundary mismatch"),
        _named(no_boundary, "multipart without boundary"),
        _named(unterminated, "multipart unterminated"),
        _named(no_disposition, "multipart part without disposition"),
        _named(many, "multipart 2000 parts"),
        _named(only_fields, "multipart without image"),
        _named(Probe("", "", rng.randbytes(500), dict(good.headers)), "multipart random body"),
    ]


def _named(probe: Probe, kind: str) -> Probe:
    probe.kind, probe.path = kind, probe.path or MD
    return probe


def _http_kinds() -> list[Probe]:
    return [
        Probe("PUT on a detect endpoint", S8, method="PUT"),  # (a GET is the model card)
        Probe("unknown model", "/detect/nope", b"x"),
        Probe("unknown path", "/predictions/../../etc/passwd", b"x"),
        Probe("declared body over 50 MiB", S8, b"", {"Content-Length": "60000000"}),
        Probe("20 KB header", S8, b"x", {"X-Big": "a" * 20000}),
        Probe("20 KB URI", S8 + "?" + "a" * 20000, b"x"),
        Probe("garbage request line", "", b"GARBAGE \x00\x01\r\n\r\n", method="RAW"),
    ]


def hostile_requests(n: int, seed: int = 11) -> list[Probe]:
    """``n`` hostile requests, every kind in turn, with seeded variations."""
    rng = random.Random(seed)
    image = rect_image(seed)
    image_b64 = base64.b64encode(image).decode()
    out: list[Probe] = []
    while len(out) < n:
        path = MD if len(out) % 2 else S8
        for kind, data in _file_kinds(rng):
            out.append(upload(kind, path, data))
        for name, values in _BAD_FIELDS.items():
            out.append(upload(f"field {name}", MD, image, **{name: rng.choice(values)}))
        out.append(upload("field on synthesis8", S8, image, zzz=b"1"))
        out.append(upload("two image parts", MD, image, file=image))
        out += [json_probe(k, MD, t) for k, t in _json_kinds(image_b64)]
        out += _multipart_kinds(image, rng)
        out += _http_kinds()
    return out[:n]


# ------------------------------------------------------------------ running and checking
def workers(
    management_url: str,
    key: str = "",
    models: tuple[str, ...] = ("synthesis8", "manipulation_density"),
) -> dict[str, list[tuple[str, str, int]]]:
    """(id, startTime, pid) of each model's workers, from the management API."""
    out = {}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for model in models:
        url = f"{management_url}/models/{model}"
        (desc,) = requests.get(url, headers=headers, timeout=10).json()
        out[model] = [(w["id"], w["startTime"], int(w["pid"])) for w in desc["workers"]]
    return out


def run_mixed(base_url: str, hostile: list[Probe], threads: int = 8) -> list[tuple[Probe, Answer]]:
    """The hostile requests with a valid one after every 9, from ``threads`` threads."""
    probes: list[Probe] = []
    for i, probe in enumerate(hostile):
        probes.append(probe)
        if i % 9 == 8:
            probes.append(valid_request(i))
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda p: send(base_url, p), probes))
    return list(zip(probes, answers, strict=True))


def hostile_failures(pairs: list[tuple[Probe, Answer]]) -> list[str]:
    """What is wrong with each hostile answer: not a 4xx, not JSON, or no message."""
    bad = []
    for probe, answer in pairs:
        if probe.kind == "valid":
            continue
        problem = ""
        if not 400 <= answer.status < 500:
            problem = f"status {answer.status}"
        elif not answer.content_type.startswith("application/json"):
            problem = f"Content-Type {answer.content_type!r}"
        else:
            try:
                body = answer.json()
                if not (body.get("message") or body.get("error")):
                    problem = "no message"
            except ValueError as e:
                problem = f"not JSON ({e})"
        if problem:
            bad.append(f"{probe.kind}: {problem}: {answer.body[:200]!r}")
    return bad


class RssPeak:
    """Peak RSS of processes, sampled every 10 ms in a thread while the block runs."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.base = self.peak = self._rss()
        self._stop = threading.Event()

    def _rss(self) -> int:
        return sum(p.memory_info().rss for p in self.procs)

    def __enter__(self) -> RssPeak:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def kill_worker_under_load(
    base_url: str, management_url: str, key: str = "", clients: int = 8
) -> tuple[float | None, Counter]:
    """SIGKILL synthesis8's worker while ``clients`` threads send valid requests; return the
    seconds until a new worker answered (None: not within 60 s) and the statuses the clients
    got (0: no answer at all). Must run on the stack's machine."""
    (old,) = workers(management_url, key, ("synthesis8",))["synthesis8"]
    answers: list[Answer] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        i = seed
        while not stop.is_set():
            try:
                answers.append(send(base_url, valid_request(2 * i)))  # even: synthesis8
            except OSError as e:  # a dropped connection: a request not answered
                answers.append(Answer(0, "", repr(e).encode()))
            i += clients

    with ThreadPoolExecutor(clients) as pool:
        for i in range(clients):
            pool.submit(client, i)
        time.sleep(3)
        os.kill(old[2], signal.SIGKILL)
        killed, recovered = time.monotonic(), None
        while recovered is None and time.monotonic() - killed < 60:
            now = workers(management_url, key, ("synthesis8",))["synthesis8"]
            if now and now[0] != old and send(base_url, valid_request(0)).status == 200:
                recovered = time.monotonic() - killed
            time.sleep(0.25)
        time.sleep(2)
        stop.set()
    return recovered, Counter(a.status for a in answers)
