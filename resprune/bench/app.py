"""``python -m resprune.bench app``: the launched app under load, on loopback.

Starts ``python app.py`` in a subprocess on a free 127.0.0.1 port (its own gradio cache folder), then runs phases
of N concurrent ``gradio_client`` clients (default N = 1, 4, 16) over a fixed mix of endpoints (``/answer`` with
several methods including FastV, ``/run``, ``/compare``, ``/new_scene``) and prints, per phase: requests,
throughput, p50 / p95 latency per endpoint, errors, and the server's RSS; then the files left in its cache.

    python -m resprune.bench app [--clients 1 4 16] [--requests 20 60 120] [--json out.json]

Also the harness the reliability tests use (``Server``, ``upload``, ``call``). Needs the repository checkout
(``app.py`` beside the ``resprune`` folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
APP = ROOT / "app.py"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python app.py`` on a free loopback port, with its own gradio cache folder and ``--delete-cache``.

    Args:
        tmp: a folder for the cache and the server log.
        delete_cache: gradio's ``(frequency, age)`` in seconds.
    """

    def __init__(self, tmp: Path, delete_cache: tuple[int, int] = (3, 8), timeout: float = 180) -> None:
        import httpx

        if not APP.exists():
            raise FileNotFoundError("app.py is not beside the resprune package: run from a repository checkout")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cache = Path(tmp) / "gradio-cache"
        self.log = Path(tmp) / "server.log"
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.cache), GRADIO_ANALYTICS_ENABLED="False")
        env.pop("GRADIO_SERVER_NAME", None)
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in close()
        cmd = [sys.executable, str(APP), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, "--delete-cache", *map(str, delete_cache)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "gradio_api/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"the server did not start in {timeout:.0f} s")

    def rss_mib(self) -> float:
        """The server process's resident set size (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line in /proc/PID/status")

    def files(self) -> list[Path]:
        """Every file in the server's gradio cache."""
        return [p for p in self.cache.rglob("*") if p.is_file()] if self.cache.exists() else []

    def alive(self) -> bool:
        """The process runs and answers a cheap request."""
        return self.proc.poll() is None and call(self, "new_scene", [])[0] == "complete"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def upload(server: Server, name: str, data: bytes) -> tuple[int, Any]:
    """Upload through gradio's route: ``(200, FileData dict)`` or ``(status, error text)``."""
    import httpx

    r = httpx.post(server.url + "gradio_api/upload", files=[("files", (name, data))], timeout=60)
    if r.status_code != 200:
        return r.status_code, r.text
    return 200, {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def call(server: Server, api: str, data: list, timeout: float = 120) -> tuple[str, Any]:
    """One request through the REST API: ``("complete", outputs)``, ``("error", message)`` or ``("http", text)``."""
    import httpx

    body = json.dumps({"data": data})  # ensure_ascii: a lone surrogate travels as its \\ud800 escape
    r = httpx.post(
        f"{server.url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    if r.status_code != 200:
        return "http", f"{r.status_code} {r.text[:300]}"
    eid = r.json()["event_id"]
    event = None
    with httpx.stream("GET", f"{server.url}gradio_api/call/{api}/{eid}", timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[5:])
                if event == "error":
                    return "error", payload.get("error") if isinstance(payload, dict) else payload
                return "complete", payload
    return "eof", None


def mixed_specs(image_path: str, questions: list[str], default_method: str) -> list[tuple[str, list]]:
    """The request mix: mostly ``/answer`` (several methods, FastV twice), one ``/run``, one ``/compare`` and
    ``/new_scene`` per cycle. ``"IMAGE"`` marks where the image goes."""
    q0, q1 = questions[0], questions[-1]
    return [
        ("answer", ["IMAGE", q0, "scenes", default_method, 36, 0.75]),
        ("answer", ["IMAGE", q0, "scenes", "fastv", 20, None]),
        ("answer", ["IMAGE", q1, "scenes", "divprune", 30, None]),
        ("new_scene", []),
        ("answer", ["IMAGE", q1, "scenes", "fastv", 8, None]),
        ("answer", ["IMAGE", q1, "scenes", "random", 12, None]),
        ("answer", ["IMAGE", q0, "scenes", "cdpruner", 24, None]),
        ("run", ["IMAGE", q0, "scenes", "fastv", 25, 16, 0.75, "auto"]),
        ("answer", ["IMAGE", q0, "scenes", "uniform", 16, None]),
        ("answer", ["IMAGE", q1, "scenes", default_method, 20, 0.5]),
        ("new_scene", []),
        ("answer", ["IMAGE", q0, "scenes", "residual", 30, None]),
        ("compare", ["IMAGE", q1, "scenes", 25, 0]),
    ]


def comparable(api: str, out: Any) -> Any:  # noqa: ANN401
    """The part of an endpoint's output that must not depend on concurrency (no timings)."""
    if api == "answer":
        r = out[0] if isinstance(out, (list, tuple)) else out
        st = r["stats"]
        return (
            r["pruned_answer"],
            r["unpruned_answer"],
            r["kept_indices"],
            st["seq_len_after"],
            st["kv_cache_bytes_after"],
        )
    if api == "run":
        stats = out[7]["data"] if isinstance(out[7], dict) else out[7]
        fixed = [r for r in stats if r[0] in ("visual tokens", "sequence length", "KV-cache bytes", "prefill FLOPs")]
        return out[0], out[1], out[2], fixed
    if api == "compare":
        rows = out[1]["data"] if isinstance(out[1], dict) else out[1]
        return [(r[0], r[1]) for r in rows]
    if api == "new_scene":
        return None
    raise ValueError(f"api: unknown endpoint {api!r}")


def load_phases(
    server: Server,
    image_path: str,
    specs: list[tuple[str, list]],
    phases: list[tuple[int, int]],
    check: Any = None,  # noqa: ANN401
) -> list[dict[str, Any]]:
    """Run ``phases`` of ``(clients, requests)``; each client cycles through ``specs`` from its own offset.

    ``check(api, spec_index, output)`` may raise to count an error. Returns one record per phase (latencies,
    throughput, errors, RSS after the phase)."""
    from gradio_client import Client, handle_file

    def args(spec: tuple[str, list]) -> list:
        return [handle_file(image_path) if a == "IMAGE" else a for a in spec[1]]

    out = []
    lock = threading.Lock()
    for n_clients, n_requests in phases:
        clients = [Client(server.url, verbose=False, download_files=False) for _ in range(n_clients)]
        lat: dict[str, list[float]] = {}
        errors: list[str] = []
        per = [n_requests // n_clients + (1 if i < n_requests % n_clients else 0) for i in range(n_clients)]

        def work(k: int, clients: list = clients, per: list = per, lat: dict = lat, errors: list = errors) -> None:
            for j in range(per[k]):
                i = (k * 5 + j) % len(specs)
                api = specs[i][0]
                t0 = time.perf_counter()
                try:
                    res = clients[k].predict(*args(specs[i]), api_name="/" + api)
                    if check is not None:
                        check(api, i, res)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"{api}: {type(e).__name__}: {e}"[:400])
                    continue
                with lock:
                    lat.setdefault(api, []).append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(n_clients) as ex:
            list(ex.map(work, range(n_clients), timeout=1800))
        wall = time.perf_counter() - t0
        done = sum(len(v) for v in lat.values())
        out.append(
            {
                "clients": n_clients,
                "requests": n_requests,
                "ok": done,
                "errors": errors,
                "seconds": wall,
                "throughput": done / wall if wall else 0.0,
                "latency": {
                    api: {"n": len(v), "p50": _pct(v, 50), "p95": _pct(v, 95)} for api, v in sorted(lat.items())
                },
                "rss_mib": server.rss_mib(),
            }
        )
    return out


def _pct(v: list[float], p: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, nargs="+", default=[20, 60, 120])
    p.add_argument("--runs", type=int, default=100, help="then this many /run requests (4 clients) for the disk count")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if len(a.clients) != len(a.requests):
        p.error(f"--clients and --requests need the same length, got {a.clients} and {a.requests}")
    from gradio_client import Client, handle_file

    import resprune
    from resprune import scenes

    s = scenes.sample(20_000_020)
    with tempfile.TemporaryDirectory(prefix="resprune-bench-app-") as tmp:
        img = Path(tmp) / "scene.png"
        s.image.save(img)
        t0 = time.perf_counter()
        server = Server(Path(tmp))
        start_s = time.perf_counter() - t0
        try:
            rss_start = server.rss_mib()
            specs = mixed_specs(str(img), [q.text for q in s.questions], resprune.DEFAULT_METHOD)
            phases = load_phases(server, str(img), specs, list(zip(a.clients, a.requests)))
            files_load = len(server.files())
            t1 = time.perf_counter()
            clients = [Client(server.url, verbose=False, download_files=False) for _ in range(4)]

            def runs(k: int) -> None:
                for j in range(k, a.runs, 4):
                    q = s.questions[j % len(s.questions)].text
                    clients[k].predict(
                        handle_file(str(img)), q, "scenes", "divprune", 25, 0, 0.75, "auto", api_name="/run"
                    )

            with ThreadPoolExecutor(4) as ex:
                list(ex.map(runs, range(4), timeout=3600))
            runs_s = time.perf_counter() - t1
            files_runs = len(server.files())
            time.sleep(12)
            files_later = len(server.files())
            rss_end = server.rss_mib()
        finally:
            server.close()
    print(f"app under load: scenes model, {platform.machine()}, {os.cpu_count()} CPUs; server start {start_s:.1f} s\n")
    print("| clients | requests | errors | throughput (req/s) | endpoint p50 / p95 (s) | server RSS after (MiB) |")
    print("|---:|---:|---:|---:|---|---:|")
    for ph in phases:
        lat = "; ".join(f"{k} {v['p50']:.2f} / {v['p95']:.2f}" for k, v in ph["latency"].items())
        print(
            f"| {ph['clients']} | {ph['requests']} | {len(ph['errors'])} | {ph['throughput']:.2f} | {lat} "
            f"| {ph['rss_mib']:.0f} |"
        )
    total = sum(ph["requests"] for ph in phases)
    print(
        f"\nRSS: {rss_start:.0f} MiB idle after start, {phases[0]['rss_mib']:.0f} MiB after the first "
        f"{phases[0]['requests']} requests, {phases[-1]['rss_mib']:.0f} MiB after {total}; {rss_end:.0f} MiB after "
        f"{a.runs} more Runs ({runs_s:.0f} s, 4 clients).\nFiles in gradio's cache: {files_load} after the load "
        f"phases, {files_runs} right after the Runs, {files_later} 12 s later (--delete-cache 3 8)."
    )
    for ph in phases:
        for e in ph["errors"][:5]:
            print(f"error ({ph['clients']} clients): {e}")
    if a.json:
        rec = {"phases": phases, "rss_start": rss_start, "rss_end": rss_end, "files": [files_load, files_runs]}
        a.json.write_text(json.dumps(rec, indent=1))
    return 1 if any(ph["errors"] for ph in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
