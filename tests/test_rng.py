"""The process-wide RNG under threads: seeded torchattacks runs stay reproducible when requests overlap.

The web app serves requests in threads. APGD and the zoo's torchattacks
attacks seed the global RNG (torchattacks draws from it); without one lock
around those sections, two requests at once reseed each other's stream and
restore each other's saved state.
"""

import contextlib
import sys
import threading

import pytest
import torch

from robgen import APGD
from robgen.attacks.zoo import TorchAttacksAttack
from robgen.engine.random import random_seed, seeded_global_rng
from tests.conftest import tiny_model

THREADS = 8


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """One intra-op thread while these tests make their many tiny calls: on a busy 2-core machine the main
    thread's 2-thread pool waits on the scheduler at every op, which makes a 0.03 s attack take seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_in_threads(jobs):
    """Run every job at once, one thread each (released together by a barrier); their results in order.

    The interpreter switches threads every few microseconds instead of every 5 ms while they run, so that
    an unguarded stretch between seeding the global RNG and drawing from it is likely to be interrupted.
    """
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except BaseException as error:  # noqa: BLE001 - reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    return results


def labelled_images():
    """A tiny model and images labelled with its own predictions (APGD leaves misclassified images alone)."""
    model = tiny_model(width=4)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def check_concurrent_runs_match_runs_alone(make_run, repeats=3):
    """`make_run(seed)()` for THREADS seeds, all at once in threads, `repeats` times: each result equals the
    same call run alone, and the caller's global RNG state is as it was."""
    seeds = list(range(THREADS))  # a different seed per thread: any reseeding by another thread shows
    alone = [make_run(seed)() for seed in seeds]
    assert not torch.equal(alone[0], alone[1]), "the seed matters (else the test could not see a race)"
    state = torch.random.get_rng_state()
    for _ in range(repeats):
        together = run_in_threads([make_run(seed) for seed in seeds])
        for seed, x_adv in zip(seeds, together):
            assert torch.equal(x_adv, alone[seed]), f"seed {seed}: a seeded run in a thread gives what it gives alone"
        assert torch.equal(torch.random.get_rng_state(), state), "the caller's global RNG state is unchanged"


def test_seeded_apgd_in_concurrent_threads_matches_the_same_call_alone():
    model, x, y = labelled_images()

    def apgd(seed):  # eps large enough to fool some images, whose examples then depend on the random start
        attack = APGD(model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(seed))
        return lambda: attack(x, y)

    check_concurrent_runs_match_runs_alone(apgd)


def test_seeded_zoo_attacks_in_concurrent_threads_match_the_same_call_alone():
    model, x, y = labelled_images()

    def pgd(seed):  # torchattacks' PGD draws its random start from the global RNG
        attack = TorchAttacksAttack(model, "PGD", eps=8 / 255, alpha=2 / 255, steps=2, random_start=True,
                                    generator=torch.Generator().manual_seed(seed))
        return lambda: attack(x, y)

    check_concurrent_runs_match_runs_alone(pgd)


def test_seeded_global_rng_seeds_the_block_and_restores_the_state():
    state = torch.random.get_rng_state()
    with seeded_global_rng(7):
        inside = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_seeded_global_rng_saves_every_cuda_device(monkeypatch):
    # torch.manual_seed (and torchattacks after it) reseeds every CUDA device, so every device's state is
    # saved and restored, not only the inputs' device. Checked on a stand-in for a 3-GPU machine.
    import robgen.engine.random as rng

    forked, seeded = [], []

    @contextlib.contextmanager
    def fork_rng(devices=None, **_):
        forked.append(list(devices))
        yield

    monkeypatch.setattr(rng.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rng.torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(rng.torch.random, "fork_rng", fork_rng)
    monkeypatch.setattr(rng.torch, "manual_seed", seeded.append)
    with seeded_global_rng(11):
        pass
    assert forked == [[0, 1, 2]] and seeded == [11]


def test_a_draw_from_the_global_rng_waits_for_another_threads_seeded_block():
    # a seed drawn without a generator (a call without one) must not come from another thread's seeded stream
    entered, release, drawn = threading.Event(), threading.Event(), []

    def seeded_block():
        with seeded_global_rng(7):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=seeded_block)
    holder.start()
    assert entered.wait(10)
    drawer = threading.Thread(target=lambda: drawn.append(random_seed(None, torch.device("cpu"))))
    drawer.start()
    drawer.join(0.2)
    waited = not drawn
    release.set()
    holder.join()
    drawer.join()
    assert waited, "the draw waited for the seeded block to end"
    assert len(drawn) == 1
