import pytest
import torch

from robgen.checks import check_labels, check_logits, check_pixels, check_positive, check_steps


def test_pixels_accepts_unit_range():
    check_pixels(torch.rand(2, 3, 8, 8), channels=3)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(3, 8, 8), "unsqueeze"),
        (torch.rand(2, 1, 8, 8), "channels"),
        (torch.rand(2, 8, 8, 3), "permute"),
        (torch.rand(2, 3, 8, 8) * 255, "divide by 255"),
        (torch.rand(2, 3, 8, 8) - 0.5, "normalised"),
        (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), "divide uint8"),
        (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
        # one infinite pixel was told to divide by 255 (+inf) or that it looked normalised (-inf)
        (torch.rand(1, 3, 4, 4).index_put_((torch.tensor([0]),) * 4, torch.tensor(float("inf"))), "infinite pixels$"),
        (torch.rand(1, 3, 4, 4).index_put_((torch.tensor([0]),) * 4, torch.tensor(-float("inf"))), "infinite pixels$"),
    ],
)
def test_pixels_refuses_with_a_hint(x, message):
    with pytest.raises((ValueError, TypeError), match=message):
        check_pixels(x, channels=3)


def test_logits_refuse_probabilities_and_log_probabilities():
    logits = torch.randn(4, 10)
    check_logits(logits)
    with pytest.raises(ValueError, match="probabilities"):
        check_logits(logits.softmax(1))
    with pytest.raises(ValueError, match="log-probabilities"):
        check_logits(logits.log_softmax(1))
    with pytest.raises(ValueError, match="shape"):
        check_logits(torch.randn(10))


def test_labels_and_numbers():
    check_labels(torch.tensor([0, 9]), 2, 10)
    with pytest.raises(ValueError, match="10 classes"):
        check_labels(torch.tensor([0, 10]), 2, 10)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        check_labels(torch.tensor([0, 1]), 3, 10)
    for dtype in (torch.int8, torch.uint16, torch.int32):  # any integer type holds indices (int8 was refused)
        check_labels(torch.tensor([0, 9]).to(dtype), 2, 10)
    for labels in (torch.tensor([0.0, 1.0]), torch.tensor([True, False])):
        with pytest.raises(TypeError, match="integer class indices"):
            check_labels(labels, 2, 10)
    with pytest.raises(ValueError):
        check_positive(0, "eps")
    with pytest.raises(ValueError):
        check_positive(-1e-3, "eps")
    with pytest.raises(ValueError):
        check_steps(0)
    assert check_steps(3) == 3
    import numpy as np

    assert check_steps(np.int64(4)) == 4 and check_steps(torch.tensor(5)) == 5 and check_steps(6.0) == 6
    for bad in (True, 2.5, torch.tensor(2.0), torch.tensor(True), torch.tensor([3]), "3"):
        with pytest.raises(TypeError, match="must be an integer >= 1"):
            check_steps(bad)


def test_integer_logits_are_refused_as_no_model_output():
    """Accepted, they failed later inside torch: "value cannot be converted to type int64_t without overflow" in
    the classification margin, "log_softmax ... not implemented for 'Long'" in log p(y | x)."""
    from robgen.energy import classification_margin

    with pytest.raises(TypeError, match="float tensor of a model's outputs, got dtype torch.int64"):
        classification_margin(torch.tensor([[3, 1], [0, 2]]), torch.tensor([0, 1]))
