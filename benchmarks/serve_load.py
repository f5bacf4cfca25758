"""Load test of `digitrec serve`: a real uvicorn server on loopback, a bounded burst of requests.

    python benchmarks/serve_load.py [--run RUN | --preset fast] [--requests 5000] [--concurrency 32 ...] [--endpoint PATH ...]

Starts `digitrec serve` in a subprocess on a free loopback port, sends `--requests` requests to
each endpoint from a lean asyncio client keeping `--concurrency` in flight, and prints throughput,
p50/p99 latency and the error count (any status but 200, or no answer). Without --run the model
has untrained weights of `--preset` (default `fast`, what `make demo` trains): latency does not
depend on the weight values.

The client runs on the same machine and takes CPU from the server, so the figures are a floor.
Target on a 2-core machine: zero errors, p50 under 20 ms for /api/predict/pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop
import numpy as np
from PIL import Image


def untrained_run(run_dir: Path, preset: str) -> Path:
    from digitrec.nets.weights import save_weights
    from digitrec.core.config import make_config
    from digitrec.nets.model import build_model

    cfg = make_config(preset)
    save_weights(run_dir / "model.safetensors", build_model(cfg), cfg)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int, workers: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "digitrec.cli", "serve", str(run_dir), "--port", str(port),
                               "--workers", str(workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("server did not start in 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (Linux /proc): unlike latency,
    not inflated by other work on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(c)) for c in children)


def sample_requests() -> dict[str, dict]:
    """One request body per endpoint: a 28x28 digit-like image, as pixels and as a PNG drawing."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[4:24, 12:16] = 255  # a "1"
    drawing = Image.new("L", (280, 280), 255)
    drawing.paste(0, (125, 40, 155, 240))
    png = io.BytesIO()
    drawing.save(png, "PNG")
    return {
        "/api/predict/pixels": {"json": {"pixels": image.tolist()}},
        "/api/predict": {"files": {"file": ("drawing.png", png.getvalue(), "image/png")}},
    }


def raw_request(url: str, request: dict) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request, built by httpx once and replayed as they are."""
    built = httpx.Request("POST", url, **request)
    body = built.read()
    head = [f"POST {built.url.raw_path.decode()} HTTP/1.1", f"Host: {built.url.netloc.decode()}"]
    head += [f"{k}: {v}" for k, v in built.headers.items() if k.lower() != "host"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def burst(url: str, request: dict, n: int, concurrency: int) -> tuple[float, np.ndarray, int]:
    """`n` requests over `concurrency` keep-alive connections, each sending its next request as soon as
    its answer is in. The client is a few lines over asyncio streams (a full HTTP client such as
    httpx spends ~1 ms of CPU per request, taken from the server it measures); it reads the status
    line and Content-Length, and checks that each answer is complete."""
    data = raw_request(url, request)
    host, port = httpx.URL(url).host, httpx.URL(url).port
    latencies, errors, remaining = [], 0, n

    async def worker():
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    writer.write(data)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
                    await reader.readexactly(length)
                    ok = head.startswith(b"HTTP/1.1 200 ")
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, AttributeError):
                    ok = False  # AttributeError: no Content-Length
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies.append(time.perf_counter() - start)
                errors += not ok
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, np.array(latencies), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory to serve (default: untrained weights of --preset)")
    parser.add_argument("--preset", default="fast", help="the untrained model's preset, without --run")
    parser.add_argument("--workers", type=int, default=1, help="server processes (`digitrec serve --workers`)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per endpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32], help="requests in flight")
    parser.add_argument("--endpoint", nargs="+", choices=list(sample_requests()), default=list(sample_requests()))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or untrained_run(Path(tmp), args.preset)
        port = free_port()
        server = start_server(run_dir, port, args.workers)
        try:
            print(f"server: digitrec serve {f'untrained {args.preset} weights' if args.run is None else run_dir} "
                  f"--workers {args.workers} on 127.0.0.1:{port}; {os.cpu_count()} CPUs shared with the client")
            print(f"{'endpoint':<22}{'requests':>9}{'conc':>6}{'seconds':>9}{'req/s':>8}"
                  f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU ms/req':>19}")
            for path, request in sample_requests().items():
                if path not in args.endpoint:
                    continue
                url = f"http://127.0.0.1:{port}{path}"
                uvloop.run(burst(url, request, 100, 4))  # warm-up: connections, thread pool, caches
                for concurrency in args.concurrency:
                    cpu_before = cpu_seconds(server.pid)
                    seconds, latencies, errors = uvloop.run(burst(url, request, args.requests, concurrency))
                    cpu_ms = (cpu_seconds(server.pid) - cpu_before) / args.requests * 1000
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                    print(f"{path:<22}{args.requests:>9}{concurrency:>6}{seconds:>9.1f}"
                          f"{args.requests / seconds:>8.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{cpu_ms:>19.2f}")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
