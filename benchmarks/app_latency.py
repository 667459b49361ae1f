"""Median time per request of each tab of the app, and 8 concurrent clients, on the shipped models.

    python benchmarks/app_latency.py [--rounds 5] [--clients 8] [--concurrency 2]

Launches app.py's Blocks on localhost (with the queue the app uses), calls
every endpoint through gradio_client `--rounds` times after one warm-up
call, and prints the median and spread. Then `--clients` clients send an
Attack request each at the same moment: it prints how many failed and the
total wall time, next to the single-request median times the number of
requests over the concurrency limit (what a perfect queue would take).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

STANDARD, ROBUST = "cifar10-resnet10-standard", "cifar10-resnet10-robust"
IMAGE = str(REPO / "examples" / "chelsea.png")

REQUESTS = {
    "attack (PGD-10)": dict(api_name="/attack", image=IMAGE, model_name=STANDARD, method="pgd", eps_255=8, steps=10,
                            step_size_255=1, lam=1.2, target="", seed=0),
    "attack (HE-PGD-10)": dict(api_name="/attack", image=IMAGE, model_name=STANDARD, method="hepgd", eps_255=8,
                               steps=10, step_size_255=1, lam=1.2, target="", seed=0),
    "detect": dict(api_name="/detect", image=IMAGE, model_name=STANDARD),
    "synthesize (8 images, 60 steps)": dict(api_name="/synthesize", model_name=ROBUST, target_class="horse", n=8,
                                            steps=60, step_size=None, seed=0),
    "gradient maps (4 models)": dict(api_name="/gradient_maps", image=IMAGE, model_name=ROBUST),
    "translate (60 steps)": dict(api_name="/translate", image=IMAGE, model_name=ROBUST, target_class="dog", steps=60),
}


def call(client: Client, request: dict) -> float:
    arguments = {k: (handle_file(v) if k == "image" else v) for k, v in request.items()}
    started = time.perf_counter()
    client.predict(**arguments)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=app.CONCURRENCY, help="the queue's concurrency limit")
    args = parser.parse_args()

    started = time.perf_counter()
    demo = app.build_app()
    demo.queue(default_concurrency_limit=args.concurrency)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, max_file_size=app.MAX_FILE_SIZE)
    print(f"app built and serving in {time.perf_counter() - started:.1f} s at {url}")
    client = Client(url, verbose=False)
    medians = {}
    print(f"{'request':34} {'median':>9} {'min':>9} {'max':>9}   ({args.rounds} rounds after 1 warm-up)")
    for name, request in REQUESTS.items():
        call(client, request)
        times = [call(client, request) for _ in range(args.rounds)]
        medians[name] = statistics.median(times)
        print(f"{name:34} {1000 * medians[name]:8.0f}ms {1000 * min(times):8.0f}ms {1000 * max(times):8.0f}ms")

    request = REQUESTS["attack (PGD-10)"]
    errors, lock = [], threading.Lock()

    def one_client() -> None:
        try:
            Client(url, verbose=False).predict(**{k: (handle_file(v) if k == "image" else v) for k, v in request.items()})
        except Exception as error:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=one_client) for _ in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - started
    ideal = medians["attack (PGD-10)"] * args.clients / args.concurrency
    print(f"{args.clients} concurrent clients, attack (PGD-10), concurrency limit {args.concurrency}: "
          f"{len(errors)} errors, total {total:.2f} s (serial median x {args.clients} / {args.concurrency} = {ideal:.2f} s; "
          f"ratio {total / ideal:.2f}, includes each client's connection set-up)")
    for error in errors[:5]:
        print(f"  {error}")
    demo.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
