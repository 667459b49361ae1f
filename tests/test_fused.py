import gc
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robgen
from robgen import PGD
from robgen.engine.fused import cached_graphs, clear_fusion_cache, fusion, fusion_enabled, inference_graph
from robgen.models import Classifier
from tests.conftest import tiny_model


def with_batch_statistics(model: Classifier, seed: int = 0) -> Classifier:
    """`model` with non-trivial batch norm: affine weights and running statistics far from (1, 0, 0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=g))
                module.bias.copy_(0.3 * torch.randn(n, generator=g))
                module.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                module.running_var.copy_(0.2 + 2 * torch.rand(n, generator=g))
    return model.eval()


@pytest.fixture
def bn_model():
    return with_batch_statistics(tiny_model(width=8, seed=3))


def test_fused_copy_gives_the_same_logits_and_input_gradients(bn_model, batch):
    x, y = batch
    graph = inference_graph(bn_model)
    assert graph is not bn_model
    outputs = []
    for module in (bn_model, graph):
        xr = x.clone().requires_grad_(True)
        logits = module(xr)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), xr)
        outputs.append((logits.detach(), grad))
    (logits, grad), (fused_logits, fused_grad) = outputs
    assert torch.allclose(fused_logits, logits, rtol=1e-4, atol=1e-5 * logits.abs().max().item())
    assert torch.allclose(fused_grad, grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())
    assert F.cosine_similarity(fused_grad.flatten(), grad.flatten(), dim=0) > 0.9999


def test_fused_copy_folds_batch_norm_and_keeps_the_classifier(bn_model):
    graph = inference_graph(bn_model)
    assert isinstance(graph, Classifier) and graph.spec is bn_model.spec
    assert torch.equal(graph.mean, bn_model.mean) and torch.equal(graph.std, bn_model.std)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules()), "the original is untouched"
    assert not graph.training and not any(p.requires_grad for p in graph.parameters())
    convs = [m for m in graph.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with pytest.raises(ValueError, match="pixels in \\[0, 1\\]"):  # still robgen's Classifier: its shape check
        graph(torch.rand(2, 1, 32, 32))


class BatchNormCalls:
    """Counts forward calls of BatchNorm2d modules anywhere (a global hook): the fused copy has none."""

    def __enter__(self):
        self.count = 0

        def hook(module, inputs, output):
            self.count += isinstance(module, nn.BatchNorm2d)

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def batch_norms(model) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_no_fused_copy_for_a_model_in_train_mode(bn_model, batch):
    x, y = batch
    clear_fusion_cache()
    bn_model.train()
    assert inference_graph(bn_model) is bn_model
    with BatchNormCalls() as calls:
        PGD(bn_model, eps=8 / 255, step_size=2 / 255, steps=2)(x, y)
    assert calls.count == 2 * batch_norms(bn_model), "the attack ran the model itself, one forward per step"
    assert bn_model.training, "the caller's train mode is restored"
    assert cached_graphs() == 0, "no fused copy was made"


def test_eval_mode_attacks_and_synthesis_run_the_fused_copy(bn_model, batch):
    x, y = batch
    inference_graph(bn_model, example=x)  # made once (finding and checking the folding runs the model)
    with BatchNormCalls() as calls:
        PGD(bn_model, eps=8 / 255, step_size=2 / 255, steps=3)(x, y)
        robgen.synthesize(bn_model, 1, n=2, steps=3, init="uniform", generator=torch.Generator().manual_seed(0))
        robgen.sgld_sample(bn_model, n=2, steps=2, generator=torch.Generator().manual_seed(0))
    assert calls.count == 0, "no batch norm ran: the fused copy did the work"
    with BatchNormCalls() as calls, fusion(False):
        PGD(bn_model, eps=8 / 255, step_size=2 / 255, steps=3)(x, y)
    assert calls.count == 3 * batch_norms(bn_model), "with fusion switched off the model itself runs"
    with BatchNormCalls() as calls:
        PGD(bn_model, eps=8 / 255, step_size=2 / 255, steps=3, fused=False)(x, y)
    assert calls.count == 3 * batch_norms(bn_model), "fused=False for one attack"
    assert fusion_enabled()


def test_a_model_with_hooks_runs_as_it_is(bn_model, batch):
    x, y = batch
    calls = []
    bn_model.register_forward_hook(lambda *args: calls.append(1))
    assert inference_graph(bn_model) is bn_model
    PGD(bn_model, eps=8 / 255, step_size=2 / 255, steps=3)(x, y)
    assert len(calls) == 3, "the caller's hook saw every step"


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_fused_attack_stays_in_the_eps_ball_and_agrees_with_the_unfused_one(bn_model, batch, norm, eps):
    x, y = batch
    settings = dict(eps=eps, step_size=eps / 4, steps=5, norm=norm, random_start=False)
    fused = PGD(bn_model, fused=True, **settings)(x, y)
    plain = PGD(bn_model, fused=False, **settings)(x, y)
    delta = (fused - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert fused.min() >= 0 and fused.max() <= 1 and (size <= eps + 1e-6).all()
    if norm == "l2":  # a continuous step: the two paths stay within float drift of each other
        assert torch.allclose(fused, plain, atol=1e-4)
    else:  # sign steps: a gradient entry within rounding of 0 may flip a pixel, nothing more
        assert ((fused - plain).abs() > 1e-6).double().mean() < 0.01


def test_synthesis_agrees_fused_and_unfused(bn_model):
    settings = dict(n=2, steps=5, init="uniform")
    fused = robgen.synthesize(bn_model, 2, generator=torch.Generator().manual_seed(0), **settings)
    with fusion(False):
        plain = robgen.synthesize(bn_model, 2, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.allclose(fused, plain, atol=1e-4)


def test_cache_returns_the_same_copy_until_the_weights_change(bn_model, batch):
    x, _ = batch
    first = inference_graph(bn_model)
    assert inference_graph(bn_model) is first
    with torch.no_grad():
        bn_model.net.head.bias.add_(1.0)  # an in-place update, as an optimiser step makes
    second = inference_graph(bn_model)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(second(x), bn_model(x), atol=1e-4), "the new copy has the new weights"
    bn_model.train()
    bn_model(x)  # a train-mode forward moves the batch-norm running statistics
    bn_model.eval()
    assert inference_graph(bn_model) is not second
    state = {k: v.clone() for k, v in bn_model.state_dict().items()}
    third = inference_graph(bn_model)
    bn_model.load_state_dict(state)
    assert inference_graph(bn_model) is not third


def test_cache_lets_models_be_garbage_collected():
    model = tiny_model(width=4, seed=5)
    inference_graph(model)
    count = cached_graphs()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None, "the cache keeps no strong reference to the model"
    assert cached_graphs() == count - 1


class Branchy(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it): the folding still holds."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.sum() > 0:
            h = h.relu()
        return self.head(h.mean((2, 3)))


def randomised_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=g))
                module.running_var.copy_(0.2 + 2 * torch.rand(module.num_features, generator=g))
                module.running_mean.copy_(torch.randn(module.num_features, generator=g))
    return model.eval()


def test_a_model_with_data_dependent_control_flow_is_fused_and_agrees(batch):
    model = randomised_batch_norm(Branchy())
    x, _ = batch
    graph = inference_graph(model, example=x)
    assert graph is not model and not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    with torch.no_grad():
        assert torch.allclose(graph(x), model(x), atol=1e-5)


class ConvUsedTwice(nn.Module):
    """The convolution's output feeds its batch norm and, unnormalised, the head: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.head(torch.cat([self.bn(h).mean((2, 3)), h.mean((2, 3))], 1))


def test_a_folding_that_would_change_the_model_is_dropped(batch):
    model = randomised_batch_norm(ConvUsedTwice())
    x, _ = batch
    assert inference_graph(model, example=x) is model, "the folded copy disagreed, so the model runs itself"
    x_adv = PGD(model, eps=8 / 255, step_size=2 / 255, steps=2)(x, torch.zeros(len(x), dtype=torch.long))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


ORIGINAL_MODULE_CALL = nn.Module.__call__


class WatchesModuleCall(nn.Module):
    """Records whether `nn.Module.__call__` is PyTorch's own each time it runs (tracing replaces it process-wide)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(nn.Module.__call__ is ORIGINAL_MODULE_CALL)
        return x


def test_making_a_fused_copy_leaves_module_calls_of_other_threads_alone(batch):
    # A copy made while another visitor's request runs the model must not change how modules are called:
    # torch.fx tracing patches nn.Module.__call__ for the whole process, which broke concurrent app requests.
    model = with_batch_statistics(tiny_model(width=4, seed=7))
    watcher = WatchesModuleCall()
    model.net.stem.append(watcher)
    x, _ = batch
    graph = inference_graph(model, example=x)
    assert graph is not model and not any(isinstance(m, nn.BatchNorm2d) for m in graph.modules())
    copied = [m for m in graph.modules() if isinstance(m, WatchesModuleCall)]
    assert copied and copied[0].seen and all(copied[0].seen), "module calls during the build were PyTorch's own"


def test_no_fused_copy_without_an_example_or_an_input_size():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert inference_graph(model) is model
    assert inference_graph(model, example=torch.rand(2, 3, 8, 8)) is not model


def test_a_change_that_touches_no_weight_makes_a_new_copy():
    from robgen.engine.fused import inference_graph

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.rand(2, 3, 8, 8)
    first = inference_graph(model, example=x)
    assert first is not model
    model[1].eps = 1.0  # a plain setting, no tensor changes
    second = inference_graph(model, example=x)
    assert second is not first
    model[2] = torch.nn.Softplus()  # a swapped module without weights
    third = inference_graph(model, example=x)
    assert third is not second
    with torch.no_grad():
        assert torch.allclose(third(x), model(x), atol=1e-5)


class Calibrated(nn.Module):
    """A wrapper that keeps its temperature as a plain tensor attribute and its activation as a function."""

    def __init__(self, net):
        super().__init__()
        self.net, self.temperature, self.squash = net, torch.tensor(1.0), torch.relu

    def forward(self, x):
        return self.squash(self.net(x)) / self.temperature


def test_a_tensor_or_function_kept_as_a_plain_attribute_makes_a_new_copy_when_it_changes():
    model = Calibrated(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                           torch.nn.Linear(4 * 6 * 6, 3))).eval()
    x = torch.rand(2, 3, 8, 8)
    first = inference_graph(model, example=x)
    assert first is not model and inference_graph(model, example=x) is first  # nothing changed: the same copy
    model.temperature = torch.tensor(4.0)  # a new tensor
    second = inference_graph(model, example=x)
    with torch.no_grad():
        model.temperature.fill_(2.0)  # the same tensor, new contents
        third = inference_graph(model, example=x)
        assert second is not first and third is not second
        assert torch.allclose(third(x), model(x), atol=1e-6)
    model.squash = torch.tanh  # a swapped function
    fourth = inference_graph(model, example=x)
    with torch.no_grad():
        assert fourth is not third and torch.allclose(fourth(x), model(x), atol=1e-6)


class PrivatelyScaled(torch.nn.Module):
    """A wrapper whose forward reads a private plain attribute."""

    def __init__(self, net):
        super().__init__()
        self.net, self._temperature = net, 1.0

    def forward(self, x):
        return self.net(x) / self._temperature


def test_a_private_attribute_the_forward_reads_makes_a_new_copy_when_it_changes():
    model = PrivatelyScaled(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))).eval()
    x = torch.rand(2, 3, 8, 8)
    first = inference_graph(model, example=x)
    assert first is not model and inference_graph(model, example=x) is first
    model._temperature = 100.0
    with torch.no_grad():
        assert torch.allclose(inference_graph(model, example=x)(x), model(x), atol=1e-6)


class Configured(torch.nn.Module):
    """A wrapper whose forward reads a dict and a tuple of tensors kept as plain attributes."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cfg, self.stats = net, {"temperature": 1.0}, (torch.zeros(3), torch.ones(3))

    def forward(self, x):
        return (self.net(x) - self.stats[0]) * self.stats[1] / self.cfg["temperature"]


def test_a_container_kept_as_a_plain_attribute_is_read_by_what_it_holds():
    model = Configured(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                           torch.nn.Linear(4 * 6 * 6, 3))).eval()
    x = torch.rand(2, 3, 8, 8)
    first = inference_graph(model, example=x)
    assert first is not model and inference_graph(model, example=x) is first
    with torch.no_grad():
        model.cfg["temperature"] = 100.0  # the same dict, changed in place
        assert torch.allclose(inference_graph(model, example=x)(x), model(x), atol=1e-6)
        model.stats[1].mul_(50.0)  # a tensor inside a tuple, changed in place
        assert torch.allclose(inference_graph(model, example=x)(x), model(x), atol=1e-6)
        model.stats = (torch.zeros(3), torch.full((3,), 2.0))  # a new tuple of tensors: compared, not ==
        assert torch.allclose(inference_graph(model, example=x)(x), model(x), atol=1e-6)
        model.activations = {"logits": model(x)}  # a dict of tensors a forward refills: read as the object it is,
        copy = inference_graph(model, example=x)  # not copied again at every call
        for _ in range(3):
            model.activations["logits"] = model(x)
            assert inference_graph(model, example=x) is copy


def test_a_batch_the_model_cannot_take_leaves_it_fused_for_the_batches_it_takes(bn_model, batch):
    x, _ = batch
    assert inference_graph(bn_model, example=x.double()) is bn_model  # float64 pixels, float32 weights: unfused
    assert inference_graph(bn_model, example=x) is not bn_model


def l2_pgd(model, x, y, fused):
    """A deterministic attack (no random start, continuous L2 steps): fused and unfused agree to float drift."""
    return PGD(model, eps=0.5, step_size=0.125, steps=4, norm="l2", random_start=False, fused=fused)(x, y)


def fused_optimiser_step(optimiser):
    def step(model, x, y):
        opt = optimiser(model.parameters(), lr=0.05, fused=True)  # fused steps bump no version counter
        F.cross_entropy(model(x), y).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    return step


def write_through_data(model, x, y):
    for parameter in model.parameters():
        parameter.data.mul_(1.05)  # `.data` has its own version counter: the parameter's does not move


@pytest.mark.parametrize("update", [fused_optimiser_step(torch.optim.SGD), fused_optimiser_step(torch.optim.Adam),
                                    write_through_data], ids=["fused-sgd", "fused-adam", "data-write"])
def test_updates_that_bump_no_version_counter_make_a_new_copy(bn_model, batch, update):
    # A model in eval mode (frozen batch norm) fine-tuned by a fused optimiser step: its tensors keep their
    # identity, storage and version counter, so only their contents tell that the weights changed.
    x, y = batch
    before = l2_pgd(bn_model, x, y, fused=True)
    versions = [p._version for p in bn_model.parameters()]
    update(bn_model, x, y)
    if update is not write_through_data:
        assert [p._version for p in bn_model.parameters()] == versions, "the step bumped no version counter"
    fused, plain = l2_pgd(bn_model, x, y, fused=True), l2_pgd(bn_model, x, y, fused=False)
    assert (plain - before).abs().max() > 1e-2, "the update changes the attack (a stale copy would be seen)"
    assert torch.allclose(fused, plain, atol=1e-4), "the fused attack ran the updated weights"


def test_a_permutation_written_through_data_makes_a_new_copy(bn_model, batch):
    # Sum and sum of squares of a tensor are blind to a permutation of its values; the fingerprint is not.
    x, _ = batch
    first = inference_graph(bn_model, example=x)
    weight = bn_model.net.head.weight
    weight.data.copy_(weight.data.flip(1))  # same values, other places
    second = inference_graph(bn_model, example=x)
    assert second is not first
    with torch.no_grad():
        assert torch.allclose(second(x), bn_model(x), atol=1e-4)


def run_with_timeout(work, seconds: float = 60.0):
    """Runs `work()` in a daemon thread; its result, or a test failure (not a hang) after `seconds`."""
    import threading

    result, errors = [], []

    def target():
        try:
            result.append(work())
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a deadlock"
    if errors:
        raise errors[0]
    return result[0]


class Purified(nn.Module):
    """A purification defence: a few PGD steps on `inner` move the input before `inner` classifies it, with
    BPDA's straight-through gradient (the purification counts as the identity on the way back).

    Its forward runs a robgen attack, so building its fused copy (which runs the forward) builds `inner`'s.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            guess = self.inner(x).argmax(1)
        purified = PGD(self.inner, eps=2 / 255, step_size=1 / 255, steps=2, random_start=False)(x.detach(), guess)
        return self.inner(x + (purified - x).detach())


def test_a_model_whose_forward_runs_an_attack_can_be_attacked(bn_model, batch):
    x, y = batch
    defended = Purified(bn_model).eval()
    settings = dict(eps=8 / 255, step_size=2 / 255, steps=2, norm="l2", random_start=False)
    fused = run_with_timeout(lambda: PGD(defended, fused=True, **settings)(x, y))
    plain = run_with_timeout(lambda: PGD(defended, fused=False, **settings)(x, y))
    assert torch.allclose(fused, plain, atol=1e-4)


class PurifiesWithItself(nn.Module):
    """A defence whose forward attacks *itself* (one step against its own guess, then classifies)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.purifying = False

    def forward(self, x):
        if self.purifying:  # the inner attack's own forward passes: no purification inside purification
            return self.net(x)
        self.purifying = True
        try:
            with torch.no_grad():
                guess = self.net(x).argmax(1)
            purified = PGD(self, eps=2 / 255, step_size=1 / 255, steps=1, random_start=False)(x.detach(), guess)
            x = x + (purified - x).detach()  # BPDA: the identity on the way back
        finally:
            self.purifying = False
        return self.net(x)


def test_a_model_whose_forward_attacks_itself_does_not_deadlock(bn_model, batch):
    x, y = batch
    defended = PurifiesWithItself(bn_model).eval()
    settings = dict(eps=8 / 255, step_size=2 / 255, steps=2, norm="l2", random_start=False)
    fused = run_with_timeout(lambda: PGD(defended, fused=True, **settings)(x, y))
    plain = run_with_timeout(lambda: PGD(defended, fused=False, **settings)(x, y))
    assert not defended.purifying
    assert torch.allclose(fused, plain, atol=1e-4)


def test_making_a_copy_leaves_the_batch_norm_statistics_alone(bn_model, batch):
    """A model in eval mode with one batch norm left in train mode: nothing the fused machinery does may
    update that layer's running statistics.

    Attacks run the model under `eval_mode` (every module in eval mode, the caller's modes restored after),
    so the unfused attack leaves the statistics bit-identical: asserted first, as the reference. The fused
    path (finding, building and checking the copy, then the attack) must leave them bit-identical too; on
    the old code the agreement check ran the caller's model as it was, and the train-mode layer folded the
    example and the check's random pixels into its running mean, variance and batch count (and, normalising
    by the batch, disagreed with the copy, which was dropped). The copy is checked against the model under
    `eval_mode`, the function both paths attack: it is made, and the two attacks agree.
    """
    x, y = batch
    norm = bn_model.net.stem[1]
    assert isinstance(norm, nn.BatchNorm2d)
    norm.train()

    def statistics():
        return [t.clone() for t in (norm.running_mean, norm.running_var, norm.num_batches_tracked)]

    before = statistics()
    plain = PGD(bn_model, fused=False, eps=8 / 255, step_size=2 / 255, steps=2, random_start=False)(x, y)
    assert all(torch.equal(a, b) for a, b in zip(statistics(), before)), "the unfused attack changes nothing"
    fused = PGD(bn_model, fused=True, eps=8 / 255, step_size=2 / 255, steps=2, random_start=False)(x, y)
    assert all(torch.equal(a, b) for a, b in zip(statistics(), before)), "the fused path changes nothing either"
    assert norm.training and not bn_model.training, "the caller's modes are kept"
    assert inference_graph(bn_model, example=x) is not bn_model, "the copy agreed with the eval-mode model"
    assert ((fused - plain).abs() > 1e-6).double().mean() < 0.01


def test_attacks_synthesis_and_gradient_maps_run_inside_inference_mode_and_leave_no_broken_copy(bn_model, batch):
    """Inside torch.inference_mode() (as an app may serve requests) an attack failed with torch's "element 0 of
    tensors does not require grad", after caching a fused copy made of inference tensors: every later attack and
    synthesis on that model, in any mode, then failed ("Inference tensors cannot be saved for backward")."""
    from robgen.attacks import APGD
    from robgen.synthesis import input_gradient, sgld_sample, synthesize

    x, y = batch
    clear_fusion_cache(bn_model)
    expected = PGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(x, y)
    clear_fusion_cache(bn_model)
    with torch.inference_mode():
        inside = PGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(x.clone(), y.clone())
        apgd = APGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(x.clone(), y.clone())
        gradient = input_gradient(bn_model, x.clone(), y.clone())
        drawn = synthesize(bn_model, 1, 2, steps=2, init="uniform", generator=torch.Generator().manual_seed(0))
        sampled = sgld_sample(bn_model, 1, 2, steps=2, init="uniform", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inside, expected, atol=1e-6)
    assert (apgd - x).abs().max() <= 8 / 255 + 1e-6 and gradient.abs().sum() > 0
    # a reject option whose score is an inner ascent, and an adaptive attack on it, likewise
    from robgen.attacks.adaptive import KPlusOnePGD
    from robgen.detection.defended import DefendedClassifier
    from robgen.detection.reject import make_reject_option

    option = make_reject_option("robust-margin", radius=2 / 255, steps=2).calibrate(bn_model, x)
    defended = DefendedClassifier(bn_model, option)
    with torch.no_grad():
        scores = defended.score(x)
    with torch.inference_mode():
        assert torch.allclose(defended.score(x.clone()), scores, atol=1e-5)
        evading = KPlusOnePGD(defended, eps=8 / 255, steps=2, generator=torch.Generator().manual_seed(0))(x.clone(), y)
    assert (evading - x).abs().max() <= 8 / 255 + 1e-6
    with torch.inference_mode():  # made in the mode, attacked after it: the labels cross-entropy saves included
        made_inside, labels_inside = x.clone(), bn_model(x).argmax(1)
    assert torch.allclose(PGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(
        made_inside, labels_inside), PGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(
        x, labels_inside.clone()), atol=1e-6)
    assert input_gradient(bn_model, made_inside, labels_inside).abs().sum() > 0
    assert drawn.shape == sampled.shape == (2, 3, 32, 32)
    graph = inference_graph(bn_model, example=x)
    assert graph is not bn_model and not any(p.is_inference() for p in graph.parameters())
    after = PGD(bn_model, eps=8 / 255, steps=3, generator=torch.Generator().manual_seed(0))(x, y)  # normal mode
    assert torch.allclose(after, expected, atol=1e-6)


class _MaskedInPlace(nn.Module):
    """conv -> ReLU(inplace=True) -> batch norm, and a class masked by a buffer (`fill` added to its logit)."""

    def __init__(self, fill: float):
        super().__init__()
        torch.manual_seed(0)  # tests only
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(8),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        self.register_buffer("mask", torch.tensor([0.0, 0.0, 0.0, 0.0, fill]))
        norm = self.body[2]
        with torch.no_grad():
            norm.running_mean.uniform_(0, 0.5), norm.running_var.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.body(x) + self.mask


def test_a_norm_after_an_in_place_op_is_not_folded_and_masked_logits_keep_the_check():
    """The norm's input was taken for the convolution's output when an in-place ReLU (or `out += shortcut`) had
    changed that very tensor, folding BN(conv x) where the model computes BN(relu(conv x)); the check then caught
    it, unless a masked class's -inf (or a fill of -1e9) set its tolerance: the copy was used, 0.4 off in a
    logit, and PGD's points moved 0.02 from the model's."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for fill in (0.0, float("-inf"), -1e9):
        model = _MaskedInPlace(fill).eval()
        graph = inference_graph(model, None, example=x)
        with torch.no_grad():
            assert torch.allclose(graph(x)[:, :4], model(x)[:, :4], atol=1e-5), fill
        attack = PGD(model, eps=8 / 255, steps=3, random_start=False)
        fused = attack(x, torch.tensor([0, 1]))
        attack.fused = False
        assert torch.allclose(fused, attack(x, torch.tensor([0, 1])), atol=1e-6), fill


def test_the_copy_follows_settings_replaced_or_written_past_a_mask():
    """A setting object replaced twice could get the first one's id back and the stale copy was used; a write
    through .data beside a -inf left the fingerprint's sums where they were (inf whatever was written)."""

    class Scale:
        def __init__(self, k):
            self.k = k

        def __call__(self, t):
            return t * self.k

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)  # tests only
            self.post = Scale(1.0)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 5))
            self.register_buffer("mask", torch.tensor([0.0, 0.0, 0.0, 0.0, float("-inf")]))

        def forward(self, x):
            return self.post(self.net(x)) + self.mask

    model, x = Scaled().eval(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def follows():
        with torch.no_grad():
            return torch.allclose(inference_graph(model, None, example=x)(x), model(x), atol=1e-5)

    assert follows()
    for k in range(2, 40):  # ids of freed objects come back soon
        model.post = Scale(float(k))
        assert follows(), k
    model.mask.data[3] = float("-inf")
    assert follows()
    model.mask.data[0] = 2.0  # a finite value beside the infinite ones
    assert follows()


def test_making_the_copy_runs_neither_the_callers_model_nor_its_random_numbers():
    """The check ran the caller's model on the example and on random pixels: a model counting its queries, or
    keeping the largest input it saw, was changed by pixels the attack never gave it; and the forward passes that
    build and check the copy drew from the global random stream, so a fused attack left it elsewhere than the
    same attack unfused."""

    class Watching(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)  # tests only
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 5))
            self.queries = 0

        def forward(self, x):
            self.queries += 1
            return self.net(x) + 0 * torch.rand(1)  # draws from the global stream, computes nothing random

    x = 0.25 + 0.25 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    queries, after = [], []
    for fused in (True, False):
        model = Watching().eval()
        torch.manual_seed(5)  # tests only
        PGD(model, eps=8 / 255, steps=3, random_start=False, fused=fused)(x, torch.tensor([0, 1]))
        queries.append(model.queries)
        after.append(torch.get_rng_state())
    assert queries[0] == queries[1] - 3  # the fused run's 3 steps went to the copy; nothing else ran the model
    assert torch.equal(after[0], after[1])
