"""`pixelwise serve` under load on loopback, beside the in-process predictor (issue 28).

    PIXELWISE_DATA=../shared/data python benchmarks/serve_load.py --budgets /tmp/budgets --work /tmp/deployed
        [--clients 8,32] [--requests 25] [NAME ...]

For each checkpoint (benchmarks/budgets.py's 4 B runs of the U-Net, FCN-8s and Mask R-CNN CPU recipes) and
runtime (torch, and OpenVINO bf16 on benchmarks/deployed.py's export), a server is started on a free loopback
port. The in-process predictor gives the reference answers, and is timed in a loop over the same validation
images in turns with the server (InProcess). C concurrent clients each send --requests requests, about one in
ten a bad input
(not an image, truncated, empty, wrong Content-Type): requests per second of the valid ones, latency p50 / p95
/ p99, the count of 5xx answers (must be 0), of valid answers that differ from the in-process prediction (must
be 0), of bad inputs not answered with a 4xx (must be 0), and the server's memory (every process of it) before
and after. Record: benchmarks/results/serve_load.json and BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import cpu_features, machine_summary, replace_section, save_record  # noqa: E402

TITLE = "pixelwise serve under load"
CHECKPOINTS = {"unet-isbi": "budget-unet-isbi", "fcn8s-camvid": "budget-fcn8s-camvid",
               "mask_rcnn-isbi": "budget-maskrcnn-isbi"}
BAD = [(b"not an image at all", "image/png"), (b"", "image/png"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"),
       (b"hello", "text/plain")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def memory_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in tree(pid):
        try:
            line = next(x for x in Path(f"/proc/{p}/status").read_text().splitlines() if x.startswith("VmRSS"))
            total += int(line.split()[1])
        except (OSError, StopIteration):
            continue
    return total / 1024


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of the tree."""
    import os

    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def post(url: str, body: bytes, kind: str) -> tuple[int, bytes, float]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": kind})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, r.read(), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.perf_counter() - t0


def answer_key(answer: dict):
    """What must equal the in-process prediction: the label map, or the detections' boxes, labels and masks."""
    if "labels_png" in answer:
        from PIL import Image

        return np.array(Image.open(io.BytesIO(base64.b64decode(answer["labels_png"])))).tobytes()
    return json.dumps([(d["label"], [round(v, 2) for v in d["box"]], d["segmentation"]["counts"])
                       for d in answer["instances"]])


class InProcess:
    """The in-process predictor beside the server, timed in turns with it (the load's rounds): on this shared
    2-core VM the same loop ran 25% faster in one minute than in the next, so a rate measured before the server's
    would not be comparable. Two loops: over the image files (each decoded, as a user's loop over files does and
    as the server decodes each upload) and over the decoded arrays."""

    def __init__(self, predictor, images: list[bytes], arrays: list) -> None:
        self.p, self.images, self.arrays = predictor, images, arrays
        self.seconds, self.count = {"files": 0.0, "arrays": 0.0}, {"files": 0, "arrays": 0}
        self.turns: list[float] = []  # images per second of each turn over the files: how much the machine drifts

    def turn(self, at_least: float = 2.0) -> None:
        from pixelwise.serve import decode_image

        for kind, step in (("files", lambda i: self.p(decode_image(self.images[i]))),
                           ("arrays", lambda i: self.p(self.arrays[i]))):
            done, t0 = 0, time.perf_counter()
            while done < len(self.images) or time.perf_counter() - t0 < at_least:  # one image at a time
                step(done % len(self.images))
                done += 1
            self.seconds[kind] += time.perf_counter() - t0
            self.count[kind] += done
            if kind == "files":
                self.turns.append(done / (time.perf_counter() - t0))

    def rate(self, kind: str) -> float:
        return self.count[kind] / self.seconds[kind]


def reference(path: Path, runtime: str | None, overrides: list[str], images: list[bytes]) -> tuple:
    """The in-process answers (through the server's own encoder), the predictor to time beside the server, and the
    server's own work per request, in seconds."""
    from pixelwise.inference import build_inference
    from pixelwise.serve import decode_image, encode

    inference = build_inference(path, runtime=runtime, overrides=overrides)
    p = inference.predictor
    arrays = [decode_image(b) for b in images]
    results = [p(a) for a in arrays]  # the reference answers, and a warm-up
    keys = [answer_key(encode(inference, {"image": p.read(a), "result": r, "overlay": False, "accept": ""}))
            for a, r in zip(arrays, results)]
    # The server's own per-request work beside the model's, in this process: base64 in and out, decoding the
    # upload, the predictor's read and check, and writing the answer (Task.answer: the PNG or the RLE masks).
    work, t0 = 0, time.perf_counter()
    for b, r in zip(images, results):
        array = decode_image(base64.b64decode(base64.b64encode(b)))
        json.dumps(encode(inference, {"image": p.read(array), "result": r, "overlay": False, "accept": ""}))
        work += 1
    overhead = (time.perf_counter() - t0) / work
    return keys, InProcess(p, images, arrays), overhead


def load(url: str, images: list[bytes], keys: list, clients: int, per_client: int, inproc: InProcess,
         server_pid: int, rounds: int = 5) -> dict:
    """The clients' requests in `rounds` rounds, the in-process predictor timed before each round and after the
    last; the server's rate over its rounds' wall time, the predictor's over its turns; the CPU time of the
    server's processes during the rounds (the inference worker is the one that used most)."""
    jobs = []
    for c in range(clients):
        for k in range(per_client):
            i = (c * per_client + k)
            jobs.append(("bad", *BAD[i % len(BAD)]) if i % 10 == 9 else ("good", i % len(images)))
    results = []

    def run(job):
        if job[0] == "bad":
            status, _, seconds = post(url, job[1], job[2])
            return "bad", status, seconds, None
        status, body, seconds = post(url, images[job[1]], "image/png")
        return "good", status, seconds, (job[1], body)

    inproc.seconds, inproc.count, inproc.turns = {k: 0.0 for k in inproc.seconds}, {k: 0 for k in inproc.count}, []
    wall, size, cpu = 0.0, -(-len(jobs) // rounds), {}
    for start in range(0, len(jobs), size):
        inproc.turn()
        t0, c0 = time.perf_counter(), cpu_seconds(server_pid)
        with ThreadPoolExecutor(clients) as pool:
            results += list(pool.map(run, jobs[start:start + size]))
        wall += time.perf_counter() - t0
        for p, seconds in cpu_seconds(server_pid).items():
            cpu[p] = cpu.get(p, 0.0) + seconds - c0.get(p, 0.0)
    inproc.turn()
    worker = max(cpu.values(), default=0.0)
    # The answers are checked after the clock: the clients share the server's 2 cores, and decoding every answer's
    # PNG while the server works would slow it for a reason that is not the server's.
    results = [r[:3] + ((r[0] == "good" and r[1] == 200 and answer_key(json.loads(r[3][1])) == keys[r[3][0]]),)
               if r[0] == "good" else r for r in results]
    good = [r for r in results if r[0] == "good"]
    lat = sorted(r[2] for r in good)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"clients": clients, "requests": len(results), "valid": len(good), "valid_per_s": len(good) / wall,
            "in_process_per_s": inproc.rate("files"), "in_process_arrays_per_s": inproc.rate("arrays"),
            "in_process_turns_per_s": inproc.turns,
            # CPU seconds per second of load: the inference worker's, and the server's other processes' (HTTP)
            "worker_cpu_per_s": worker / wall, "other_cpu_per_s": (sum(cpu.values()) - worker) / wall,
            "p50_s": q[49], "p95_s": q[94], "p99_s": q[98], "errors_5xx": sum(r[1] >= 500 for r in results),
            "different": sum(r[3] is False for r in good),
            "bad_not_4xx": sum(not 400 <= r[1] < 500 for r in results if r[0] == "bad")}


def bench(name: str, path: Path, runtime: str | None, overrides: list[str], images: list[bytes], clients: list[int],
          per_client: int, batch: int = 1) -> dict:
    keys, inproc, overhead = reference(path, runtime, overrides, images)
    port = free_port()
    cmd = [sys.executable, "-m", "pixelwise", "serve", "--checkpoint", str(path), "--port", str(port),
           "--max-batch-size", str(batch), *(["--batch-timeout", "0.05"] if batch > 1 else []),
           *(["--runtime", runtime] if runtime else []), *[x for o in overrides for x in ("-o", o)]]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        for image in images:  # warm-up: the first pass of each size (OpenVINO compiles a graph per shape)
            post(f"{url}/predict", image, "image/png")
        before = memory_mb(server.pid)
        rows = [load(f"{url}/predict", images, keys, c, per_client, inproc, server.pid) for c in clients]
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=120)
    for r in rows:
        r["ratio_to_in_process"] = r["valid_per_s"] / r["in_process_per_s"]
        r["ratio_to_arrays"] = r["valid_per_s"] / r["in_process_arrays_per_s"]
        print(f"{name} ({runtime or 'torch'}): {r['clients']} clients: {r['valid_per_s']:.2f} valid req/s "
              f"(in-process {r['in_process_per_s']:.2f} img/s, ratio {r['ratio_to_in_process']:.2f}), p50 "
              f"{r['p50_s']:.2f} s, 5xx {r['errors_5xx']}, different {r['different']}", flush=True)
    return {"checkpoint": name, "runtime": runtime or "torch", "max_batch_size": batch, "interleaved": True,
            "serve_work_per_image_s": overhead, "memory_mb_before": before, "memory_mb_after": after, "rows": rows}


def images_for(name: str, n: int) -> list[bytes]:
    """The first n validation images as PNG files: CamVid's val folder, or ISBI 2012's slices 25-29 (the recipes'
    validation split; the data root's isbi2012/train/image/NN.png)."""
    import os

    root = Path(os.environ["PIXELWISE_DATA"])
    if "camvid" in name:
        files = sorted((root / "camvid" / "val").glob("*.png"))[:n]
    else:
        files = [root / "isbi2012" / "train" / "image" / f"{k:02d}.png" for k in range(25, 25 + n)]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        sys.exit(f"{name}: validation images missing under {root} ({missing[:1] or 'none found'}); set PIXELWISE_DATA")
    return [f.read_bytes() for f in files]


def table(record: dict, args) -> str:
    lines = [("| checkpoint | runtime | batch | clients | valid req/s | in-process img/s: files / arrays | ratio: files / "
              "arrays | p50 / p95 / p99 s | serve work / model time | server CPU s/s: worker / other | 5xx | different "
              "| bad not 4xx | memory MB before -> after |"), "|---" * 14 + "|"]
    for res in record["results"]:
        for r in res["rows"]:
            files, arrays = (r.get(k, res.get(k)) for k in ("in_process_per_s", "in_process_arrays_per_s"))
            work = f"{res['serve_work_per_image_s'] * arrays:.3f}" if arrays and "serve_work_per_image_s" in res else "-"
            to_arrays = f"{r['ratio_to_arrays']:.2f}" if "ratio_to_arrays" in r else "-"
            cpu = f"{r['worker_cpu_per_s']:.2f} / {r['other_cpu_per_s']:.2f}" if "worker_cpu_per_s" in r else "-"
            lines.append(f"| {res['checkpoint']} | {res['runtime']} | {res['max_batch_size']} | {r['clients']} | "
                         f"{r['valid_per_s']:.2f} | {files:.2f} / {arrays or 0:.2f} | "
                         f"{r['ratio_to_in_process']:.2f} / {to_arrays} | "
                         f"{r['p50_s']:.2f} / {r['p95_s']:.2f} / {r['p99_s']:.2f} | {work} | {cpu} | {r['errors_5xx']} | "
                         f"{r['different']} | {r['bad_not_4xx']} | {res['memory_mb_before']:.0f} -> "
                         f"{res['memory_mb_after']:.0f} |")
    return (f"Command: `python benchmarks/serve_load.py --clients {args.clients} --requests {args.requests}` "
            f"({record.get('date')}, {record.get('machine')}). One in ten requests is a bad input; \"different\" "
            "counts valid answers that are not the in-process predictor's. In-process: the predictor called in a loop "
            "on the same image files (each decoded, as the server decodes each upload) and on the decoded arrays, "
            "in this process, in turns with the server (before each of 5 rounds of requests and after the last): "
            "ratio = the server's valid requests per second / those images per second. \"serve work / model time\": "
            "the server's own work per request (base64 in and out, decoding the upload, the predictor's read, writing "
            "the answer), timed in process, over the predictor's time per decoded image. Server CPU: CPU seconds per "
            "second of load of the inference worker and of the server's other processes (HTTP), of 2 cores.\n\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    p.add_argument("--budgets", type=Path, default=Path("/tmp/budgets"))
    p.add_argument("--work", type=Path, default=Path("/tmp/deployed"), help="benchmarks/deployed.py's --work")
    p.add_argument("--runtimes", default="torch,openvino", help="torch and/or openvino (bf16, the deployed export)")
    p.add_argument("--clients", default="8,32")
    p.add_argument("--requests", type=int, default=25, help="requests per client (25: 1,000 over 8 and 32 clients)")
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--max-batch-size", type=int, default=1, help="the server's --max-batch-size")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    path = ROOT / "benchmarks" / "results" / "serve_load.json"
    record = json.loads(path.read_text()) if path.exists() else {"results": []}  # rows of other runs are kept
    for name in args.names:
        ckpt = args.budgets / CHECKPOINTS[name] / "4-b" / "seed0" / "best.pt"
        images = images_for(name, args.images)
        for runtime in args.runtimes.split(","):
            if runtime == "torch":
                row = bench(name, ckpt, None, [], images, clients, args.requests, args.max_batch_size)
            else:
                exported = args.work / f"{name}.openvino.xml"
                if not exported.exists():
                    print(f"{exported} missing: run benchmarks/deployed.py first", file=sys.stderr)
                    continue
                row = bench(name, exported, "openvino", ["infer.precision=bf16"], images, clients, args.requests,
                            args.max_batch_size)
            key = (row["checkpoint"], row["runtime"], row["max_batch_size"])
            record["results"] = [r for r in record["results"]
                                 if (r["checkpoint"], r["runtime"], r.get("max_batch_size", 1)) != key] + [row]
            record.update(machine=machine_summary(), cpu=cpu_features(), date=time.strftime("%Y-%m-%d"))
            save_record("serve_load", record)
    replace_section(ROOT / "BENCHMARKS.md", TITLE, table(record, args))


if __name__ == "__main__":
    main()
