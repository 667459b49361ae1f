"""Median time per request of each tab of the app, and bursts of concurrent clients, on the shipped models.

    python benchmarks/app_latency.py [--rounds 5] [--clients 8,32] [--bursts 3] [--concurrency 2]

Launches app.py's Blocks on 127.0.0.1 (with the queue the app uses), calls
every endpoint through gradio_client `--rounds` times after one warm-up
call, and prints the median and spread. Then, for each number in
`--clients`, that many clients at once (`--bursts` times) send the same
photo, half to /attack (PGD-10) and half to /detect, as visitors of a
public demo do: it prints how many requests failed (with the first errors)
and the wall time per burst, next to what a perfect queue would take (the
serial medians over the concurrency limit). Exits 1 when any request failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
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
                                            steps=60, automatic_step_size=True, step_size=0.25, seed=0),
    "gradient maps (4 models)": dict(api_name="/gradient_maps", image=IMAGE, model_name=ROBUST),
    "translate (60 steps)": dict(api_name="/translate", image=IMAGE, model_name=ROBUST, target_class="dog", steps=60),
}


def call(client: Client, request: dict) -> float:
    arguments = {k: (handle_file(v) if k == "image" else v) for k, v in request.items()}
    started = time.perf_counter()
    client.predict(**arguments)
    return time.perf_counter() - started


def burst(url: str, requests: list) -> tuple:
    """Each request from a client of its own, all at once: (errors, wall seconds)."""
    errors, lock = [], threading.Lock()

    def one_client(request: dict) -> None:
        try:
            call(Client(url, verbose=False), request)
        except Exception as error:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=one_client, args=(request,)) for request in requests]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", default="8,32", help="comma-separated burst sizes")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per size")
    parser.add_argument("--concurrency", type=int, default=app.CONCURRENCY,
                        help="model events run at once (the app's ROBGEN_CONCURRENCY)")
    args = parser.parse_args()

    started = time.perf_counter()
    # the limit each model event is built with (a queue's default limit does not override an event's own), and
    # the app's own queue (its max_size too): queue() again would replace it
    app.CONCURRENCY = app.concurrency(str(args.concurrency))
    demo = app.build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1",
                            max_file_size=app.MAX_FILE_SIZE)
    print(f"app built and serving in {time.perf_counter() - started:.1f} s at {url}")
    client = Client(url, verbose=False)
    medians = {}
    print(f"{'request':34} {'median':>9} {'min':>9} {'max':>9}   ({args.rounds} rounds after 1 warm-up)")
    for name, request in REQUESTS.items():
        call(client, request)
        times = [call(client, request) for _ in range(args.rounds)]
        medians[name] = statistics.median(times)
        print(f"{name:34} {1000 * medians[name]:8.0f}ms {1000 * min(times):8.0f}ms {1000 * max(times):8.0f}ms")

    failed = 0
    for clients in (int(n) for n in args.clients.split(",")):
        mix = [REQUESTS["attack (PGD-10)"] if i % 2 else REQUESTS["detect"] for i in range(clients)]
        ideal = sum(medians["attack (PGD-10)"] if i % 2 else medians["detect"] for i in range(clients)) / args.concurrency
        errors, walls = [], []
        for _ in range(args.bursts):
            burst_errors, wall = burst(url, mix)
            errors += burst_errors
            walls.append(wall)
        failed += len(errors)
        print(f"{clients} clients at once x {args.bursts} bursts, the same photo to /attack and /detect, concurrency "
              f"limit {args.concurrency}: {len(errors)} errors in {clients * args.bursts} requests; wall per burst "
              f"median {statistics.median(walls):.2f} s (perfect queue {ideal:.2f} s; includes each client's set-up)")
        for error, count in Counter(errors).most_common(3):
            print(f"  {count} x {error[:200]}")
    demo.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
