"""Adversarial examples (forgeml.adversarial): each attack stays inside its ε-ball and the valid
range, PGD is at least as strong as FGSM, tables and texts are attacked in their own spaces, and
adversarial training buys robustness."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config

import forgeml
from forgeml.adversarial import Adversary, InputSpace, input_space, token_embedding
from forgeml.errors import ConfigError
from forgeml.inputs import InputSpec
from forgeml.registry import MODELS

pytestmark = pytest.mark.usefixtures("single_thread_torch")

IMAGE = InputSpec("image", (1, 8, 8))


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = forgeml.load_config(tiny_config()).model
    return MODELS.build(cfg, inputs=IMAGE, num_outputs=10).eval()


def pixel_batch(count: int = 16) -> tuple[torch.Tensor, torch.Tensor, InputSpace, torch.Tensor]:
    """Standardised model inputs of random pixels, their labels, the pixel space and the pixels."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(count, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    space = input_space(small_cnn(), IMAGE, image_norm=([0.3], [0.25]))
    return (pixels - 0.3) / 0.25, labels, space, pixels


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbation_stays_within_eps_and_pixels_in_range(method: str, norm: str):
    inputs, labels, space, pixels = pixel_batch()
    eps = 0.1 if norm == "linf" else 0.8
    adversary = Adversary(small_cnn(), space, method, eps, norm, steps=5)  # type: ignore[arg-type]
    delta = adversary.attack(inputs, labels)
    assert delta.shape == pixels.shape
    sizes = delta.flatten(1).abs().amax(dim=1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert float(sizes.max()) <= eps + 1e-5
    assert float(sizes.max()) > 0.5 * eps  # it moved
    attacked = pixels + delta
    assert float(attacked.min()) >= -1e-6 and float(attacked.max()) <= 1 + 1e-6


def test_fgsm_linf_is_the_signed_gradient_step_clipped_to_the_pixels():
    inputs, labels, space, pixels = pixel_batch()
    model = small_cnn()
    raw = pixels.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model((raw - 0.3) / 0.25), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, raw)
    expected = (pixels + 0.05 * gradient.sign()).clamp(0, 1) - pixels
    delta = Adversary(model, space, "fgsm", 0.05, "linf", random_start=False).attack(inputs, labels)
    assert torch.allclose(delta, expected, atol=1e-6)


def test_outputs_with_the_perturbation_are_the_models_outputs_on_the_perturbed_pixels():
    inputs, labels, space, pixels = pixel_batch()
    model = small_cnn()
    adversary = Adversary(model, space, "pgd", 0.1, steps=3)
    delta = adversary.attack(inputs, labels)
    with torch.no_grad():
        assert torch.allclose(adversary.outputs(model, inputs, delta), model((pixels + delta - 0.3) / 0.25), atol=1e-5)
        assert torch.equal(adversary.outputs(model, inputs, None), model(inputs))


def test_the_attack_raises_the_loss():
    inputs, labels, space, _ = pixel_batch(64)
    model = small_cnn()
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(inputs), labels)
    for method in ("fgsm", "pgd"):
        adversary = Adversary(model, space, method, 0.1, steps=10)  # type: ignore[arg-type]
        with torch.no_grad():
            attacked = torch.nn.functional.cross_entropy(adversary.outputs(model, inputs, adversary.attack(inputs, labels)), labels)
        assert attacked > clean + 0.05, method


def test_the_attack_leaves_the_model_in_training_mode_when_it_was():
    inputs, labels, space, _ = pixel_batch()
    model = small_cnn().train()
    Adversary(model, space, "pgd", 0.1, steps=2).attack(inputs, labels)
    assert model.training


def test_table_inputs_are_clipped_to_the_training_range():
    generator = torch.Generator().manual_seed(0)
    train_inputs = torch.randn(200, 5, generator=generator)
    spec = InputSpec("vector", (5,))
    torch.manual_seed(0)
    model = MODELS.build(forgeml.load_config(tiny_config(model={"type": "mlp", "hidden": [8]})).model, inputs=spec, num_outputs=3)
    space = input_space(model, spec, train_inputs)
    assert space.kind == "inputs"
    inputs, labels = train_inputs[:32], torch.randint(0, 3, (32,), generator=generator)
    delta = Adversary(model, space, "pgd", 2.0, steps=5).attack(inputs, labels)
    attacked = inputs + delta
    assert bool((attacked >= train_inputs.amin(0) - 1e-6).all()) and bool((attacked <= train_inputs.amax(0) + 1e-6).all())
    assert float(delta.abs().max()) <= 2.0 + 1e-6
    # an example outside the training range is not dragged back into it (that would exceed eps)
    outside = inputs[:4] + 10.0
    delta = Adversary(model, space, "pgd", 0.1, steps=3).attack(outside, labels[:4])
    assert float(delta.abs().max()) <= 0.1 + 1e-6 and float(delta.abs().max()) > 0


def test_text_is_attacked_in_the_embedding_space():
    spec = InputSpec("tokens", (12,), vocab_size=50, pad_id=0, unk_id=1)
    torch.manual_seed(0)
    model = MODELS.build(
        forgeml.load_config(tiny_config(model={"type": "rnn", "cell": "lstm", "embedding_dim": 16, "hidden_size": 16})).model,
        inputs=spec,
        num_outputs=2,
    ).eval()
    space = input_space(model, spec)
    assert space.kind == "embeddings" and space.embedding is token_embedding(model, 50)
    assert space.unit == pytest.approx(float(space.embedding.weight.detach().std()))
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 50, (8, 12), generator=generator)
    labels = torch.randint(0, 2, (8,), generator=generator)
    adversary = Adversary(model, space, "pgd", 0.5, steps=5)
    delta = adversary.attack(ids, labels)
    assert delta.shape == (8, 12, 16)
    assert float(delta.abs().max()) <= 0.5 * space.unit + 1e-5  # ε in standard deviations of the table
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(model(ids), labels)
        attacked = torch.nn.functional.cross_entropy(adversary.outputs(model, ids, delta), labels)
        assert attacked > clean
        assert torch.equal(adversary.outputs(model, ids, torch.zeros_like(delta)), model(ids))
    assert not space.embedding._forward_hooks  # the hooks are gone afterwards


def test_a_model_without_a_token_embedding_is_a_clear_error():
    with pytest.raises(ConfigError, match="no token embedding"):
        token_embedding(torch.nn.Linear(3, 3), 50)


def test_ratio_attacks_only_the_first_share_of_the_batch():
    inputs, labels, space, _ = pixel_batch()
    model = small_cnn()
    adversary = Adversary(model, space, "pgd", 0.2, steps=3)
    with torch.no_grad():
        clean = model(inputs)
    mixed = adversary.training_outputs(model, inputs, labels, ratio=0.5).detach()
    assert torch.allclose(mixed[8:], clean[8:], atol=1e-6)
    assert not torch.allclose(mixed[:8], clean[:8], atol=1e-3)
    assert torch.equal(adversary.training_outputs(model, inputs, labels, ratio=1.0, strength=0.0).detach(), clean)


def robust_accuracy(run_dir: Path, method: str, eps: float) -> float:
    from forgeml.robustness import run

    return run(run_dir, method, [eps], steps=10, save=False).points[0].robust_accuracy


@pytest.fixture(scope="module")
def undefended(tmp_path_factory: pytest.TempPathFactory, single_thread_torch: None) -> Path:
    config = tiny_config(train={"epochs": 8, "batch_size": 32, "lr": 0.01})
    return forgeml.train(config, out=tmp_path_factory.mktemp("undefended") / "run", quiet=True).run_dir


def test_pgd_is_at_least_as_strong_as_fgsm(undefended: Path):
    for eps in (0.05, 0.1):
        assert robust_accuracy(undefended, "pgd", eps) <= robust_accuracy(undefended, "fgsm", eps)


def test_adversarial_training_buys_robustness(undefended: Path, tmp_path: Path):
    adversarial = {"method": "pgd", "eps": 0.3, "steps": 5, "eps_warmup": 200}
    config = tiny_config(train={"epochs": 8, "batch_size": 32, "lr": 0.01, "adversarial": adversarial})
    defended = forgeml.train(config, out=tmp_path / "defended", quiet=True).run_dir
    # pinned on this seed: undefended 0.2011, PGD-trained 0.4749 under PGD-10 at ε 0.1
    assert robust_accuracy(undefended, "pgd", 0.1) == pytest.approx(0.2011, abs=0.03)
    assert robust_accuracy(defended, "pgd", 0.1) == pytest.approx(0.4749, abs=0.03)


def test_adversarial_training_of_a_regression_is_a_config_error(tmp_path: Path):
    config = tiny_config(
        data={
            "source": {"type": "builtin", "name": "breast_cancer"},
            "features": [{"type": "number", "name": "mean_texture"}],
            "target": {"type": "number", "name": "mean_radius"},
        },
        model={"type": "mlp", "hidden": [4]},
        train={"max_steps": 2, "adversarial": {"eps": 0.1}},
    )
    with pytest.raises(ConfigError, match="adversarial training is for classifiers"):
        forgeml.train(config, out=tmp_path / "run", quiet=True)
