"""Fuzz the image reader and the two web endpoints, then soak the web app under mixed traffic.

    python benchmarks/fuzz.py [--cases 5000] [--soak-minutes 5] [--concurrency 64] [--heavy 12 24]
                              [--run RUN] [--save DIR]

Fuzz targets, `--cases` each, from a fixed seed (`--seed`):
  image    mutated PNG/JPEG/GIF/BMP/TIFF/WebP files through `open_image` + the preprocessing
           `digitrec predict` runs (to_mnist, or split_digits for --multi)
  upload   POST /api/predict with mutated image files and mutated multipart bodies
  pixels   POST /api/predict/pixels with mutated and hostile JSON bodies
The endpoints run in process (FastAPI's test client). A case fails if it raises anything but
digitrec's InputError (or gets a 5xx, or an error without a one-line JSON `detail`), or takes
longer than `--case-seconds`; a process stuck for 20x that is stopped with a traceback
(faulthandler), so the run never hangs. Each target prints cases, failures, its time, and the
process's resident memory at its start and end and the peak so far (VmRSS, VmHWM).

The soak starts `digitrec serve` on a free loopback port (as serve_load.py does) and keeps
`--concurrency` keep-alive connections busy for `--soak-minutes` with a mix of valid and hostile
requests (malformed JSON and HTTP, garbage and mutated images, bodies over the limit, unknown
paths). An error is a 5xx, no answer within 10 s, or a status the request should not get. It
prints requests/s, p50/p99 latency, errors and the server's memory at start (after a warm-up),
every minute, and at the end. Without --run the model has untrained `fast` weights.

Last, `--heavy` sends 12 and then 24 uploads at once of a ~70 KB PNG that holds a 36-megapixel
image (legal, and the most memory one upload can take) to a fresh server, and prints its memory.

tests/e2e/test_fuzz.py runs a short slice of the fuzz and the soak (a few hundred cases, 4 s of soak).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, raw_request, start_server, untrained_run  # noqa: E402

from digitrec.core.files import InputError
from digitrec.outputs.images import open_image, split_digits, to_mnist


# ---------------------------------------------------------------------------------------------
# inputs and mutations


def seed_images() -> dict[str, bytes]:
    """Valid files to mutate: a dark digit on light paper in every supported format and a few modes."""
    page = Image.new("L", (96, 80), 235)
    page.paste(30, (40, 14, 52, 66))  # a "1"
    page.paste(30, (30, 14, 52, 22))
    rgba = page.convert("RGBA")
    rgba.putalpha(Image.new("L", page.size, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate on reading
    out = {}
    for name, image, fmt, options in (
            ("png", page, "PNG", {}), ("png-rgba", rgba, "PNG", {}), ("png-16bit", page.convert("I;16"), "PNG", {}),
            ("png-palette", page.convert("P"), "PNG", {}), ("jpeg", page.convert("RGB"), "JPEG", {"quality": 80}),
            ("jpeg-exif", page.convert("RGB"), "JPEG", {"exif": exif}), ("gif", page, "GIF", {}),
            ("bmp", page, "BMP", {}), ("tiff", page, "TIFF", {"compression": "tiff_deflate"}),
            ("tiff-raw", page.convert("RGB"), "TIFF", {}), ("webp", page.convert("RGB"), "WEBP", {"quality": 80}),
            ("webp-lossless", rgba, "WEBP", {"lossless": True})):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out[name] = buffer.getvalue()
    return out


INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x00\x00\x00\x00",
               b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x01\x00\x00", b"\x00\x00\xff\xff"]


def mutate(data: bytes, rng: np.random.Generator, others: list[bytes] = ()) -> bytes:
    """1-8 random edits (mostly 1-2), AFL-style: flip a bit, set a byte, write an interesting value (often where
    headers keep sizes), delete, duplicate or insert a run, truncate, or splice in another file."""
    data = bytearray(data)
    for _ in range(min(8, int(rng.geometric(0.5)))):  # mostly one or two: most files stay nearly valid
        at = int(rng.integers(len(data))) if data else 0
        if rng.random() < 0.4:  # headers: the first 64 bytes
            at = min(at, int(rng.integers(64)))
        op = int(rng.integers(8))
        if op == 0 and data:
            data[at] ^= 1 << int(rng.integers(8))
        elif op == 1 and data:
            data[at] = int(rng.integers(256))
        elif op == 2:
            value = INTERESTING[int(rng.integers(len(INTERESTING)))]
            data[at:at + len(value)] = value
        elif op == 3:
            del data[at:at + int(rng.integers(1, 64))]
        elif op == 4:
            data[at:at] = data[at:at + int(rng.integers(1, 256))]
        elif op == 5:
            data[at:at] = rng.bytes(int(rng.integers(1, 64)))
        elif op == 6:
            del data[int(rng.integers(len(data) + 1)):]
        elif others:
            other = others[int(rng.integers(len(others)))]
            cut = int(rng.integers(len(other) + 1))
            data[at:] = other[cut:]
    return bytes(data)


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every PNG chunk's CRC, so a mutation gets past the checksum into the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    data, at = bytearray(data), 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        end = at + 8 + length
        if end + 4 > len(data):
            break
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[at + 4:end])))
        at = end + 4
    return bytes(data)


def mutated_image(seeds: dict[str, bytes], rng: np.random.Generator) -> tuple[str, bytes]:
    name = list(seeds)[int(rng.integers(len(seeds)))]
    data = mutate(seeds[name], rng, list(seeds.values()))
    if rng.random() < 0.5:
        data = fix_png_crcs(data)
    return name, data


HOSTILE_VALUES = [None, True, "7", "", -1, 256, 1e400, -1e400, 10 ** 30, 2 ** 63, -2 ** 63, 0.5, [], {}, [7], [[7]]]


def hostile_pixels_body(rng: np.random.Generator) -> bytes:
    """A pixels request to refuse or to answer: a valid body with one part broken, or bytes mutated."""
    pixels = rng.integers(0, 256, 784).tolist()
    kind = int(rng.integers(6))
    if kind == 0:
        pixels[int(rng.integers(784))] = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
    elif kind == 1:
        pixels = np.reshape(pixels, (28, 28)).tolist()
        pixels[int(rng.integers(28))] = pixels[0][:int(rng.integers(28))]  # a ragged row
    elif kind == 2:
        pixels = pixels[:int(rng.integers(784))]
    elif kind == 3:
        value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        for _ in range(int(rng.integers(1, 40))):  # deep nesting
            value = [value] if rng.random() < 0.7 else {"pixels": value}
        return json.dumps(value).encode()
    body = json.dumps({"pixels": pixels}, allow_nan=True).encode()
    return mutate(body, rng) if kind >= 4 else body


def multipart_body(data: bytes, rng: np.random.Generator, filename: str = "a.png") -> tuple[bytes, str]:
    boundary = "b" + rng.bytes(8).hex()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# ---------------------------------------------------------------------------------------------
# the fuzz loops


@dataclass
class FuzzResult:
    target: str
    cases: int = 0
    refused: int = 0  # cases that got digitrec's own error (InputError, or a 4xx)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest: float = 0.0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    peak_mb: float = 0.0

    def line(self) -> str:
        return (f"{self.target:<8}{self.cases:>8}{self.refused:>9}{len(self.failures):>10}{self.seconds:>9.1f}"
                f"{1000 * self.slowest:>12.0f}{self.rss_start_mb:>11.0f}{self.rss_end_mb:>9.0f}{self.peak_mb:>9.0f}")


HEADER = (f"{'target':<8}{'cases':>8}{'refused':>9}{'failures':>10}{'seconds':>9}{'slowest ms':>12}"
          f"{'RSS start':>11}{'RSS end':>9}{'peak MB':>9}")


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in MB (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    values = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status if line.startswith(("VmRSS", "VmHWM"))}
    return {"rss": values.get("VmRSS", 0.0), "peak": values.get("VmHWM", 0.0)}


def _run_cases(target: str, cases: int, case_seconds: float, one_case, save_dir: Path | None) -> FuzzResult:
    """Call `one_case(i)` -> (refused, description) `cases` times; anything it raises is a failure."""
    result = FuzzResult(target, rss_start_mb=memory_mb()["rss"])
    faulthandler.dump_traceback_later(20 * case_seconds + 30, repeat=False, exit=True)  # a hang stops the run
    start = time.perf_counter()
    try:
        for i in range(cases):
            case_start = time.perf_counter()
            try:
                refused, problem, data = one_case(i)
            except Exception as e:
                refused, problem, data = False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}", None
            elapsed = time.perf_counter() - case_start
            result.slowest = max(result.slowest, elapsed)
            if problem is None and elapsed > case_seconds:
                problem = f"took {elapsed:.1f} s (limit {case_seconds} s)"
            result.cases += 1
            result.refused += refused
            if problem is not None:
                result.failures.append(f"case {i}: {problem}")
                if save_dir is not None and data is not None:
                    save_dir.mkdir(parents=True, exist_ok=True)
                    (save_dir / f"{target}-{i}.bin").write_bytes(data)
            faulthandler.dump_traceback_later(20 * case_seconds + 30, repeat=False, exit=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
    result.seconds = time.perf_counter() - start
    memory = memory_mb()
    result.rss_end_mb, result.peak_mb = memory["rss"], memory["peak"]
    return result


def fuzz_images(cases: int, seed: int = 0, case_seconds: float = 5.0, save_dir: Path | None = None) -> FuzzResult:
    """Mutated image files through open_image and `predict`'s preprocessing: a reading or an InputError."""
    rng = np.random.default_rng(seed)
    seeds = seed_images()

    def one_case(i):
        kind, data = mutated_image(seeds, rng)
        name = f"case{i}.{kind}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a warning leaking to the user counts as a failure too
                image = open_image(data, name)
                split_digits(image) if i % 2 else to_mnist(image)
        except InputError as e:
            message = str(e)
            ok = message.startswith(f"{name}: ") and "\n" not in message
            return True, None if ok else f"InputError not one line naming the file: {message!r}", data
        return False, None, data

    return _run_cases("image", cases, case_seconds, one_case, save_dir)


def _check_response(response) -> str | None:
    """None if the answer is a prediction or a refusal with a one-line JSON detail, else what is wrong."""
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} without a JSON body: {response.text[:200]!r}"
    if response.status_code == 200:
        return None if isinstance(body.get("label"), int) and len(body.get("probabilities", [])) == 10 else f"bad 200: {body}"
    detail = body.get("detail") if isinstance(body, dict) else None
    return None if isinstance(detail, str) and "\n" not in detail else f"HTTP {response.status_code}, detail {detail!r}"


def fuzz_upload(client, cases: int, seed: int = 0, case_seconds: float = 5.0, save_dir: Path | None = None) -> FuzzResult:
    """POST /api/predict: mutated images as files, and mutated multipart bodies around a valid image."""
    rng = np.random.default_rng(seed)
    seeds = seed_images()

    def one_case(i):
        kind, data = mutated_image(seeds, rng)
        if i % 3 == 2:
            body, content_type = multipart_body(seeds[kind], rng)
            data = mutate(body, rng)
            response = client.post("/api/predict", content=data, headers={"content-type": content_type})
        else:
            filename = rng.bytes(int(rng.integers(0, 40))).decode("latin-1") if i % 3 == 1 else f"case{i}.{kind}"
            response = client.post("/api/predict", files={"file": (filename, data, "image/png")})
        return response.status_code != 200, _check_response(response), data

    return _run_cases("upload", cases, case_seconds, one_case, save_dir)


def fuzz_pixels(client, cases: int, seed: int = 0, case_seconds: float = 5.0, save_dir: Path | None = None) -> FuzzResult:
    """POST /api/predict/pixels with hostile JSON: broken values, ragged rows, deep nesting, mutated bytes."""
    rng = np.random.default_rng(seed)
    content_types = ["application/json", "application/json; charset=utf-8", "application/x+json", "", "text/plain"]

    def one_case(i):
        data = hostile_pixels_body(rng)
        response = client.post("/api/predict/pixels", content=data,
                               headers={"content-type": content_types[i % len(content_types)]})
        return response.status_code != 200, _check_response(response), data

    return _run_cases("pixels", cases, case_seconds, one_case, save_dir)


def app_client(run_dir: Path):
    """An in-process client of the app serving `run_dir` (use as a context manager)."""
    with warnings.catch_warnings():  # starlette's test client nags about its httpx dependency
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from digitrec.outputs.serve import create_app

    return TestClient(create_app(run_dir), raise_server_exceptions=False)


# ---------------------------------------------------------------------------------------------
# the soak


def soak_requests(seed: int = 0, max_body_bytes: int = 1 << 20) -> list[tuple[str, bytes, set[int]]]:
    """(kind, raw HTTP request, statuses it may get): valid and hostile, in a fixed shuffled order."""
    import httpx

    rng = np.random.default_rng(seed)
    seeds = seed_images()
    url = "http://127.0.0.1:1"  # the Host header only; the connection decides where it goes
    pixels = rng.integers(0, 256, (28, 28)).tolist()
    requests = [("valid", raw_request(f"{url}/api/predict/pixels", {"json": {"pixels": pixels}}), {200}),
                ("valid", raw_request(f"{url}/api/predict", {"files": {"file": ("d.png", seeds["png"], "image/png")}}), {200}),
                ("valid", raw_request(f"{url}/api/predict", {"files": {"file": ("d.jpg", seeds["jpeg"], "image/jpeg")}}), {200}),
                ("valid", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", {200}),
                ("valid", b"GET /api/model HTTP/1.1\r\nHost: x\r\n\r\n", {200})] * 4
    for i in range(40):
        requests.append(("hostile", raw_request(f"{url}/api/predict/pixels", {
            "content": hostile_pixels_body(rng), "headers": {"content-type": "application/json"}}), {200, 422}))
        _, data = mutated_image(seeds, rng)
        requests.append(("hostile", raw_request(f"{url}/api/predict", {
            "files": {"file": (f"m{i}.png", data, "image/png")}}), {200, 400, 422}))
    garbage = rng.bytes(5000)
    requests += [
        ("hostile", raw_request(f"{url}/api/predict", {"files": {"file": ("g.png", garbage, "image/png")}}), {400}),
        ("hostile", raw_request(f"{url}/api/predict", {"content": b"x" * 100,
                                                         "headers": {"content-type": "multipart/form-data"}}), {400, 422}),
        ("hostile", b"POST /api/predict/pixels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % (max_body_bytes + 1), {413}),  # refused unread
        ("hostile", b"POST /api/predict/pixels HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", {400, 413}),
        ("hostile", b"GET /no/such/page HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
        ("hostile", b"DELETE /api/predict HTTP/1.1\r\nHost: x\r\n\r\n", {405}),
        ("hostile", b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
        ("hostile", b"BREW /healthz HTTP/9.9\r\n\r\n", {400}),
        ("hostile", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: " + b"a" * 20_000 + b"\r\n\r\n", {200, 400, 431}),
    ]
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


@dataclass
class SoakResult:
    seconds: float = 0.0
    requests: int = 0
    valid: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    memory: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, server RSS MB)
    log_lines: int = 0  # lines the server wrote to stderr
    log_kinds: list[tuple[int, str]] = field(default_factory=list)  # (count, line with numbers as #), most first


async def _read_response(reader) -> tuple[int, bool]:
    """Read one response; (status, whether the server closes the connection after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    else:
        await reader.read()  # no length: the body runs to the end of the connection
        return status, True
    return status, headers.get("connection", "").lower() == "close"


async def _soak(port: int, requests: list, seconds: float, concurrency: int, server_pid: int,
                sample_every: float) -> SoakResult:
    result = SoakResult()
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(offset: int):
        reader = writer = None
        i = offset
        while time.perf_counter() < deadline:
            kind, data, expected = requests[i % len(requests)]
            i += 1
            sent = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
                writer.write(data)
                status, closes = await asyncio.wait_for(_read_response(reader), 10)
                problem = None if status in expected else f"HTTP {status} for {data[:60]!r} (expected {sorted(expected)})"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError) as e:
                status, closes, problem = 0, True, f"{type(e).__name__} for {data[:60]!r}"
            result.latencies.append(time.perf_counter() - sent)
            result.requests += 1
            result.valid += kind == "valid"
            if problem is not None:
                result.errors += 1
                if len(result.error_samples) < 10:
                    result.error_samples.append(problem)
            if closes and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def sampler():
        while time.perf_counter() < deadline:
            await asyncio.sleep(min(sample_every, max(0.0, deadline - time.perf_counter())))
            result.memory.append((time.perf_counter() - start, memory_mb(server_pid)["rss"]))

    result.memory.append((0.0, memory_mb(server_pid)["rss"]))
    await asyncio.gather(sampler(), *(worker(k * 7) for k in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def soak(run_dir: Path, seconds: float, concurrency: int = 64, seed: int = 0, sample_every: float = 60.0,
         warmup_seconds: float = 5.0) -> SoakResult:
    """Serve `run_dir` with `digitrec serve` on loopback and keep it busy with the mixed requests."""
    import uvloop

    requests = soak_requests(seed)
    port = free_port()
    server = start_server(run_dir, port, workers=1)
    log_lines = []  # the server's stderr, read as it comes: a full pipe would stop the server
    reader = threading.Thread(target=lambda: log_lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        uvloop.run(_soak(port, requests, warmup_seconds, concurrency, server.pid, warmup_seconds))  # caches, pools
        result = uvloop.run(_soak(port, requests, seconds, concurrency, server.pid, sample_every))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            raise SystemExit("the server did not stop within 10 s of SIGTERM")
    reader.join(5)
    result.log_lines = len(log_lines)
    kinds = Counter(re.sub(rb"\d+", b"#", line).decode(errors="replace").strip() for line in log_lines)
    result.log_kinds = [(count, line) for line, count in kinds.most_common(5)]
    return result


def print_soak(result: SoakResult, concurrency: int) -> None:
    p50, p99 = np.percentile(result.latencies, [50, 99]) * 1000
    rss = [mb for _, mb in result.memory]
    print(f"soak: {result.seconds / 60:.1f} min, {concurrency} connections, {result.requests} requests "
          f"({result.valid} valid, {result.requests - result.valid} hostile), {result.requests / result.seconds:.0f} "
          f"requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, {result.errors} errors")
    print("server RSS MB over time: " + ", ".join(f"{t / 60:.1f} min {mb:.0f}" for t, mb in result.memory)
          + f"; growth {rss[-1] - rss[0]:+.1f} MB; {result.log_lines} lines of server log")
    for sample in result.error_samples:
        print(f"  error: {sample}")
    for count, line in result.log_kinds:
        print(f"  server log: {count} x {line[:150]}")


def heavy_uploads(run_dir: Path, n: int, side: int = 6000) -> dict:
    """`n` uploads at once of a ~70 KB PNG holding a side x side (36-megapixel) blank 16-bit image:
    legal (under the body and pixel limits) and the most memory one upload can take. Returns the
    server's resident memory before and after and its peak (MB), and the statuses."""
    import httpx

    buffer = io.BytesIO()
    Image.new("I;16", (side, side), 0).save(buffer, "PNG")
    port = free_port()
    server = start_server(run_dir, port, workers=1)
    threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()
    try:
        before = memory_mb(server.pid)

        async def upload_all():
            async with httpx.AsyncClient(timeout=600) as client:
                return await asyncio.gather(*(client.post(f"http://127.0.0.1:{port}/api/predict", files={
                    "file": ("page.png", buffer.getvalue(), "image/png")}) for _ in range(n)))

        start = time.perf_counter()
        responses = asyncio.run(upload_all())
        seconds = time.perf_counter() - start
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    return {"n": n, "png_bytes": len(buffer.getvalue()), "seconds": seconds, "rss_before": before["rss"],
            "rss_after": after["rss"], "peak": after["peak"], "statuses": sorted({r.status_code for r in responses})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="fuzz cases per target")
    parser.add_argument("--targets", nargs="+", choices=["image", "upload", "pixels"], default=["image", "upload", "pixels"])
    parser.add_argument("--case-seconds", type=float, default=5.0, help="time limit of one case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soak-minutes", type=float, default=5.0, help="0: no soak")
    parser.add_argument("--concurrency", type=int, default=64, help="soak connections")
    parser.add_argument("--run", type=Path, help="run directory to serve (default: untrained `fast` weights)")
    parser.add_argument("--save", type=Path, help="write each failing case's bytes here")
    parser.add_argument("--heavy", type=int, nargs="*", default=[12, 24],
                        help="after the soak: this many 36-megapixel uploads at once (one server per number)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or untrained_run(Path(tmp), "fast")
        print(f"fuzz: {args.cases} cases per target, seed {args.seed}, {args.case_seconds} s per case; "
              f"{os.cpu_count()} CPUs")
        print(HEADER)
        results = []
        for target in args.targets:
            if target == "image":
                result = fuzz_images(args.cases, args.seed, args.case_seconds, args.save)
            else:
                with app_client(run_dir) as client:
                    fuzz = fuzz_upload if target == "upload" else fuzz_pixels
                    result = fuzz(client, args.cases, args.seed, args.case_seconds, args.save)
            print(result.line(), flush=True)
            results.append(result)
        for result in results:
            for failure in result.failures[:10]:
                print(f"  {result.target} {failure}")
        if args.soak_minutes > 0:
            print_soak(soak(run_dir, 60 * args.soak_minutes, args.concurrency), args.concurrency)
        for n in args.heavy:
            heavy = heavy_uploads(run_dir, n)
            print(f"heavy: {n} uploads at once of a {heavy['png_bytes'] / 1000:.0f} KB PNG holding 36 megapixels: "
                  f"statuses {heavy['statuses']}, {heavy['seconds']:.1f} s; server RSS {heavy['rss_before']:.0f} MB "
                  f"before, {heavy['rss_after']:.0f} MB after, peak {heavy['peak']:.0f} MB")


if __name__ == "__main__":
    main()
