"""Load test of `digitrec serve`: a real uvicorn server on loopback, a bounded burst of requests.

    python benchmarks/serve_load.py [--run RUN] [--requests 5000] [--concurrency 32 ...] [--endpoint PATH ...]

Starts `digitrec serve` in a subprocess on a free loopback port, sends `--requests` requests to
each endpoint from an async httpx client keeping `--concurrency` in flight, and prints throughput,
p50/p99 latency and the error count (any status but 200, or no answer). Without --run the model
has untrained weights of preset `seed`: latency does not depend on the weight values.

The client runs on the same machine and takes CPU from the server, so the figures are a floor.
Target on a 2-core machine: zero errors, p50 under 20 ms for /api/predict/pixels.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def untrained_run(run_dir: Path) -> Path:
    from digitrec.checkpoint import save_weights
    from digitrec.config import make_config
    from digitrec.model import build_model

    cfg = make_config("seed")
    save_weights(run_dir / "model.safetensors", build_model(cfg), cfg)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "digitrec.cli", "serve", str(run_dir), "--port", str(port)],
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
    """User + system CPU time of a process so far (Linux /proc): unlike latency, not inflated by
    other work on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def burst(url: str, request: dict, n: int, concurrency: int) -> tuple[float, np.ndarray, int]:
    latencies = []
    errors = 0
    remaining = n
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    response = await client.post(url, **request)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return seconds, np.array(latencies), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory to serve (default: untrained seed weights)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per endpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32], help="requests in flight")
    parser.add_argument("--endpoint", nargs="+", choices=list(sample_requests()), default=list(sample_requests()))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or untrained_run(Path(tmp))
        port = free_port()
        server = start_server(run_dir, port)
        try:
            print(f"server: digitrec serve {'untrained seed weights' if args.run is None else run_dir} "
                  f"on 127.0.0.1:{port}; {os.cpu_count()} CPUs shared with the client")
            print(f"{'endpoint':<22}{'requests':>9}{'conc':>6}{'seconds':>9}{'req/s':>8}"
                  f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU ms/req':>19}")
            for path, request in sample_requests().items():
                if path not in args.endpoint:
                    continue
                url = f"http://127.0.0.1:{port}{path}"
                asyncio.run(burst(url, request, 100, 4))  # warm-up: connections, thread pool, caches
                for concurrency in args.concurrency:
                    cpu_before = cpu_seconds(server.pid)
                    seconds, latencies, errors = asyncio.run(burst(url, request, args.requests, concurrency))
                    cpu_ms = (cpu_seconds(server.pid) - cpu_before) / args.requests * 1000
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
                    print(f"{path:<22}{args.requests:>9}{concurrency:>6}{seconds:>9.1f}"
                          f"{args.requests / seconds:>8.0f}{p50:>9.1f}{p99:>9.1f}{errors:>8}{cpu_ms:>19.2f}")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
