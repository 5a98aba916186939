"""Gaussian diffusion maths against independent closed forms, the hybrid loss, respacing, and
the guided DDIM sampler (guidance, batching, determinism, k-averaging)."""

import math

import numpy as np
import pytest
import torch

from genbrain.model.diffusion import DDIMSampler, GaussianDiffusion, space_timesteps
from genbrain.model.dit import PRESETS, DiT, build_dit

V = 1000
N_MOD = 5
T_TEST = torch.tensor([0, 1, 2, 10, 250, 500, 998, 999])



def reference_abar() -> tuple[np.ndarray, np.ndarray]:
    betas = np.linspace(1e-4, 0.02, 1000)
    return betas, np.cumprod(1.0 - betas)


def x_and_noise(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, 50, generator=g, dtype=torch.float64),
            torch.randn(n, 2, 50, generator=g, dtype=torch.float64))


def test_q_sample_matches_closed_form():
    d = GaussianDiffusion.linear()
    _, abar = reference_abar()
    x0, noise = x_and_noise(len(T_TEST))
    a = torch.from_numpy(abar[T_TEST.numpy()])[:, None, None]
    mean, var, log_var = d.q_mean_variance(x0, T_TEST)
    np.testing.assert_allclose(mean, a.sqrt() * x0, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(var.expand_as(x0), (1 - a).expand_as(x0), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(log_var.exp(), var, rtol=1e-6)
    xt = d.q_sample(x0, T_TEST, noise)
    np.testing.assert_allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6, rtol=1e-6)
    # Empirically too: at t = 500, x_t has mean sqrt(abar) x_0 and variance 1 - abar.
    g = torch.Generator().manual_seed(1)
    many = d.q_sample(torch.full((20000, 1, 1), 2.0), torch.full((20000,), 500),
                      torch.randn(20000, 1, 1, generator=g))
    assert abs(many.mean() - 2 * math.sqrt(abar[500])) < 0.03
    assert abs(many.var() - (1 - abar[500])) < 0.03


def test_q_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from the product of q(x_{t-1} | x_0) and q(x_t | x_{t-1})."""
    d = GaussianDiffusion.linear()
    betas, abar = reference_abar()
    t = T_TEST[T_TEST > 0]
    x0, xt = x_and_noise(len(t), seed=2)
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    tn = t.numpy()
    beta, a_prev, alpha = betas[tn], abar[tn - 1], 1 - betas[tn]
    precision = 1 / (1 - a_prev) + alpha / beta
    ref_var = torch.from_numpy(1 / precision)[:, None, None]
    ref_mean = ref_var * (torch.from_numpy(np.sqrt(a_prev) / (1 - a_prev))[:, None, None] * x0
                          + torch.from_numpy(np.sqrt(alpha) / beta)[:, None, None] * xt)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(var.flatten(), ref_var.flatten(), rtol=1e-6)
    np.testing.assert_allclose(log_var.flatten(), np.log(ref_var.flatten().numpy()), atol=1e-6)
    # t = 0: zero variance, log variance clipped to that of t = 1 (improved-diffusion)
    _, var0, log_var0 = d.q_posterior_mean_variance(x0[:1], xt[:1], torch.tensor([0]))
    assert var0.item() == 0 and log_var0.item() == pytest.approx(math.log(d.posterior_variance[1]))


def test_fifty_step_respacing():
    kept = space_timesteps(1000, 50)
    assert kept == [round(i * 999 / 49) for i in range(50)]
    assert kept[:3] == [0, 20, 41] and kept[-2:] == [979, 999]
    for spec in ("50", "ddim50", [50], np.int64(50)):
        assert space_timesteps(1000, spec) == kept
    assert space_timesteps(100, "10,20") == sorted(
        [round(i * 49 / 9) for i in range(10)] + [50 + round(i * 49 / 19) for i in range(20)])
    with pytest.raises(ValueError, match="not understood"):
        space_timesteps(1000, "fifty")
    d = GaussianDiffusion.linear()
    r = d.respace(kept)
    assert r.num_timesteps == 50 and r.timestep_map.tolist() == kept
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-12)
    assert r.model_timesteps(torch.tensor([0, 2, 49])).tolist() == [0, 41, 999]


def test_learned_range_variance_and_x0_prediction():
    d = GaussianDiffusion.linear()
    x0, noise = x_and_noise(len(T_TEST), seed=3)
    t = T_TEST
    xt = d.q_sample(x0, t, noise)
    lo = torch.from_numpy(d.posterior_log_variance_clipped[t.numpy()])[:, None, None]
    hi = torch.from_numpy(np.log(d.betas[t.numpy()]))[:, None, None]
    for v, expected in ((-1.0, lo), (1.0, hi), (0.0, (lo + hi) / 2)):
        out = d.p_mean_variance(torch.cat([noise, torch.full_like(noise, v)], 1), xt, t)
        np.testing.assert_allclose(out["log_variance"], expected.expand_as(x0), atol=1e-9)
        np.testing.assert_allclose(out["pred_xstart"], x0, atol=1e-6)  # the true noise -> x_0
        true_mean, _, _ = d.q_posterior_mean_variance(x0, xt, t)
        np.testing.assert_allclose(out["mean"], true_mean, atol=1e-6)


def test_hybrid_loss_of_a_perfect_model_and_frozen_mean():
    d = GaussianDiffusion.linear()
    x0, noise = x_and_noise(len(T_TEST), seed=4)
    t = T_TEST
    v = torch.full_like(noise, -1.0, requires_grad=True)  # log variance = the true one
    eps = noise.clone().requires_grad_(True)
    seen = {}

    def oracle(x, tm):
        seen["t"] = tm
        return torch.cat([eps, v], 1)

    terms = d.training_losses(oracle, x0, t, noise)
    assert torch.equal(seen["t"], t)  # unrespaced: the model sees the step itself
    np.testing.assert_allclose(terms["mse"].detach(), 0, atol=1e-20)
    vb = terms["vb"].detach()
    np.testing.assert_allclose(vb[1:], 0, atol=1e-6)  # KL between identical Gaussians
    log_var0 = math.log(d.posterior_variance[1])  # decoder at t = 0, mean exactly x_0
    assert vb[0].item() == pytest.approx(0.5 * (math.log(2 * math.pi) + log_var0) / math.log(2))
    terms["vb"].sum().backward()
    assert torch.count_nonzero(eps.grad) == 0  # the bound term does not move the mean
    assert torch.count_nonzero(v.grad) > 0


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_nano_model_overfits_one_toy_image(prediction):
    # nano's depth/width/heads, with a patch (16) no larger than the width (64): with P = 256 a
    # token squeezes 256 noise values through 64 dims and the MSE cannot fall below ~0.75.
    torch.manual_seed(0)
    model = DiT(512, **{**PRESETS["nano/256"], "patch_size": 16}, n_modalities=N_MOD)
    d = GaussianDiffusion.linear(prediction=prediction)
    x0 = torch.sin(torch.linspace(0, 6 * math.pi, 512)).reshape(1, 1, 512).expand(16, 1, 512)
    lab = {"age": torch.zeros(16), "sex": torch.zeros(16, dtype=torch.long),
           "modality": torch.zeros(16, dtype=torch.long)}

    def fn(x, t):
        return model(x, t, **lab, force_drop=torch.zeros(16, dtype=torch.bool))

    g_eval = torch.Generator().manual_seed(1)
    t_eval = torch.randint(1, 1000, (16,), generator=g_eval)
    n_eval = torch.randn(16, 1, 512, generator=g_eval)

    def evaluate():
        with torch.no_grad():
            return d.training_losses(fn, x0, t_eval, n_eval)["loss"].mean().item()

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = d.training_losses(fn, x0, d.sample_timesteps(16, g), generator=g)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert before > 0.5 and after < 0.1 * before  # untrained: E|noise|^2 = 1, E|v|^2 ~ 0.6


def sampling_model() -> DiT:
    model = build_dit("nano/256", V, n_modalities=N_MOD)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained model predicts 0: randomise its zero-init layers
        for b in model.blocks:
            b.adaLN_modulation[-1].weight.normal_(std=0.05, generator=g)
        model.final_layer.linear.weight.normal_(std=0.05, generator=g)
        model.final_layer.adaLN_modulation[-1].weight.normal_(std=0.05, generator=g)
    return model.eval()


LABELS = {"age": torch.tensor([0.5, -1.0]), "sex": torch.tensor([0, 1]),
          "modality": torch.tensor([2, 4])}


def draw(sampler, model, seed, **kw):
    return sampler.sample(model, LABELS, V, torch.Generator().manual_seed(seed), **kw)


def test_guidance_scale_one_equals_conditional_sampling_and_seeds():
    model = sampling_model()
    d = GaussianDiffusion.linear()
    cond_only = draw(DDIMSampler(d, 50, guidance_scale=None), model, 0)
    assert cond_only.shape == (2, 1, V) and torch.isfinite(cond_only).all()
    scale_one = draw(DDIMSampler(d, 50, guidance_scale=1.0), model, 0)
    torch.testing.assert_close(scale_one, cond_only, atol=1e-4, rtol=1e-4)
    guided = draw(DDIMSampler(d, 50, guidance_scale=3.0), model, 0)
    assert (guided - cond_only).abs().max() > 1e-2
    assert torch.equal(draw(DDIMSampler(d, 50), model, 0), draw(DDIMSampler(d, 50), model, 0))
    other_seed = draw(DDIMSampler(d, 50), model, 1)
    assert (other_seed - draw(DDIMSampler(d, 50), model, 0)).abs().max() > 0.1


def test_guidance_on_epsilon_only_in_one_batch():
    d = GaussianDiffusion.linear()
    sampler = DDIMSampler(d, 50, guidance_scale=1.5)
    calls = []

    def fake(x, t, force_drop, age, sex, modality):
        calls.append((x.shape[0], force_drop.tolist(), t.tolist()))
        eps = torch.where(force_drop[:, None, None], -1.0, 1.0) * torch.ones_like(x)
        var = torch.where(force_drop[:, None, None], 0.9, -0.3) * torch.ones_like(x)
        return torch.cat([eps, var], 1)

    x = torch.randn(3, 1, V)
    lab = {"age": torch.zeros(3), "sex": torch.zeros(3), "modality": torch.zeros(3)}
    out = sampler.guided_output(fake, x, torch.full((3,), 49), lab, None)
    assert calls == [(6, [False] * 3 + [True] * 3, [999] * 6)]
    assert torch.allclose(out[:, 0], torch.full((3, V), -1 + 1.5 * 2))  # null + s (cond - null)
    assert torch.allclose(out[:, 1], torch.full((3, V), -0.3))  # variance: conditional rows
    calls.clear()
    sampler.sample(fake, lab, V, torch.Generator().manual_seed(0), k=2)
    assert len(calls) == 50 and all(c[0] == 12 for c in calls)
    assert [c[2][0] for c in calls] == space_timesteps(1000, 50)[::-1]


def test_ddim_recovers_a_point_mass_with_the_oracle_epsilon():
    """For data = one point x0 the exact eps is (x_t - sqrt(abar) x0) / sqrt(1 - abar) at the
    model's (original) timestep; DDIM must then land on x0, whatever the initial noise."""
    d = GaussianDiffusion.linear()
    target = torch.linspace(-2, 2, V).reshape(1, 1, V)

    def oracle(x, t, force_drop, **labels):
        a = torch.from_numpy(d.alphas_cumprod[t.numpy()]).float()[:, None, None]
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    out = DDIMSampler(d, 50).sample(oracle, {"age": torch.zeros(2)}, V,
                                    torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(2, 1, V), atol=1e-4, rtol=1e-4)


def test_k_sample_average():
    model = sampling_model()
    sampler = DDIMSampler(GaussianDiffusion.linear(), 50)
    one = {k: v[:1] for k, v in LABELS.items()}
    averaged = sampler.sample(model, one, V, torch.Generator().manual_seed(5), k=3)
    rows = sampler.sample(model, {k: v.repeat(3) for k, v in one.items()}, V,
                          torch.Generator().manual_seed(5), k=1)
    torch.testing.assert_close(averaged, rows.mean(0, keepdim=True), atol=1e-5, rtol=1e-5)
    assert rows.std(0).mean() > 0.1  # the k samples differ


def test_eps_and_x0_predictions_are_inverse():
    d = GaussianDiffusion.linear()
    x, eps = x_and_noise(len(T_TEST))
    x0 = d.predict_xstart_from_eps(x, T_TEST, eps)
    torch.testing.assert_close(d.predict_eps_from_xstart(x, T_TEST, x0), eps, atol=1e-8,
                               rtol=1e-8)


def test_clip_x0_clamps_the_clean_estimate_and_stays_consistent():
    """With a clamp the DDIM step uses the clamped x0 and the epsilon implied by it; with an
    oracle for a target inside the clamp the result is unchanged, and a bad model's runaway
    x0 (1/sqrt(abar) ~ 160 at t = 999) stays bounded."""
    d = GaussianDiffusion.linear()
    target = torch.linspace(-2, 2, V).reshape(1, 1, V)

    def oracle(x, t, force_drop, **labels):
        a = torch.from_numpy(d.alphas_cumprod[t.numpy()]).float()[:, None, None]
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    g = torch.Generator().manual_seed(0)
    clipped = DDIMSampler(d, 50, clip_x0=3.0).sample(oracle, {"age": torch.zeros(2)}, V, g)
    torch.testing.assert_close(clipped, target.expand(2, 1, V), atol=1e-4, rtol=1e-4)

    def wrong(x, t, force_drop, **labels):  # predicts zero noise: x0 = x / sqrt(abar)
        return torch.zeros(x.shape[0], 2, x.shape[2])

    free = DDIMSampler(d, 50).sample(wrong, {"age": torch.zeros(1)}, V,
                                     torch.Generator().manual_seed(0))
    bounded = DDIMSampler(d, 50, clip_x0=3.0).sample(wrong, {"age": torch.zeros(1)}, V,
                                                     torch.Generator().manual_seed(0))
    assert free.abs().max() > 50
    assert bounded.abs().max() <= 3.0 + 1e-5
    with pytest.raises(Exception, match="clip_x0 must be > 0"):
        DDIMSampler(d, 50, clip_x0=0)


def test_explicit_initial_noise_replaces_the_generator():
    model = sampling_model()
    sampler = DDIMSampler(GaussianDiffusion.linear(), 10)
    noise = torch.randn(2, 1, V, generator=torch.Generator().manual_seed(9))
    a = sampler.sample(model, LABELS, V, torch.Generator().manual_seed(1), noise=noise)
    b = sampler.sample(model, LABELS, V, torch.Generator().manual_seed(2), noise=noise)
    assert torch.equal(a, b)
    with pytest.raises(Exception, match=r"sampling noise has shape \(1, 1, 1000\); expected"):
        sampler.sample(model, LABELS, V, torch.Generator(), noise=noise[:1])


# ------------------------------------------------------------------ v-prediction


def test_v_prediction_converts_to_eps_and_x0_in_closed_form():
    d = GaussianDiffusion.linear(prediction="v")
    _, abar = reference_abar()
    x0, noise = x_and_noise(len(T_TEST), seed=6)
    a = torch.from_numpy(abar[T_TEST.numpy()])[:, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0  # Salimans & Ho (2022), eq. for v
    np.testing.assert_allclose(d.velocity(x0, T_TEST, noise), v, atol=1e-9)
    eps, x0_hat = d.eps_and_xstart(v, xt, T_TEST)
    np.testing.assert_allclose(eps, noise, atol=1e-9)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-9)
    # the epsilon diffusion reads the same channels as noise
    eps_d = GaussianDiffusion.linear()
    e2, x2 = eps_d.eps_and_xstart(noise, xt, T_TEST)
    assert torch.equal(e2, noise)
    np.testing.assert_allclose(x2, x0, atol=1e-6)
    # respacing keeps the parameterisation
    assert d.respace(space_timesteps(1000, 50)).prediction == "v"
    with pytest.raises(Exception, match="prediction 'x0' is unknown; expected one of: epsilon, v"):
        GaussianDiffusion.linear(prediction="x0")


def test_v_prediction_hybrid_loss_of_a_perfect_model():
    d = GaussianDiffusion.linear(prediction="v")
    x0, noise = x_and_noise(len(T_TEST), seed=7)
    v_true = d.velocity(x0, T_TEST, noise)
    var = torch.full_like(noise, -1.0, requires_grad=True)
    terms = d.training_losses(lambda x, tm: torch.cat([v_true, var], 1), x0, T_TEST, noise)
    np.testing.assert_allclose(terms["mse"].detach(), 0, atol=1e-20)
    np.testing.assert_allclose(terms["vb"].detach()[1:], 0, atol=1e-6)
    # the noise is the wrong answer for a v model: its mse is E|noise - v|^2 > 0
    wrong = d.training_losses(lambda x, tm: torch.cat([noise, var], 1), x0, T_TEST, noise)
    assert (wrong["mse"][4:] > 0.1).all()  # t >= 250: v is far from the noise


def test_ddim_recovers_a_point_mass_with_the_oracle_v():
    d = GaussianDiffusion.linear(prediction="v")
    target = torch.linspace(-2, 2, V).reshape(1, 1, V)

    def oracle(x, t, force_drop, **labels):  # exact v for data = one point
        a = torch.from_numpy(d.alphas_cumprod[t.numpy()]).float()[:, None, None]
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * target
        return torch.cat([v, torch.zeros_like(v)], 1)

    out = DDIMSampler(d, 50).sample(oracle, {"age": torch.zeros(2)}, V,
                                    torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target.expand(2, 1, V), atol=1e-4, rtol=1e-4)


def test_guiding_v_is_guiding_epsilon():
    """The docstring's claim: CFG applied to v gives the epsilon that CFG applied to the
    implied epsilons would, so a v model is guided 'on epsilon only' too."""
    d = GaussianDiffusion.linear(prediction="v")
    sampler = DDIMSampler(d, 50, guidance_scale=1.2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, V, generator=g)
    v_c, v_u = torch.randn(2, 1, V, generator=g), torch.randn(2, 1, V, generator=g)

    def fake(x_in, t, force_drop, **labels):
        v = torch.where(force_drop[:, None, None], torch.cat([v_u, v_u]), torch.cat([v_c, v_c]))
        return torch.cat([v, torch.zeros_like(v)], 1)

    t = torch.full((2,), 30)
    out = sampler.guided_output(fake, x, t, {"age": torch.zeros(2)}, None)
    eps_guided, _ = sampler.diffusion.eps_and_xstart(out[:, :1], x, t)
    eps_c, _ = sampler.diffusion.eps_and_xstart(v_c, x, t)
    eps_u, _ = sampler.diffusion.eps_and_xstart(v_u, x, t)
    torch.testing.assert_close(eps_guided, eps_u + 1.2 * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_untrained_v_model_samples_stay_bounded():
    """A zero-initialised v model predicts v = 0, i.e. x_0 = sqrt(abar) x_t: DDIM then keeps
    unit-scale values (the epsilon model's zero prediction makes x_0 = x_t / sqrt(abar)
    explode, see test_clip_x0_...)."""
    model = build_dit("nano/256", V, n_modalities=N_MOD).eval()
    out = draw(DDIMSampler(GaussianDiffusion.linear(prediction="v"), 50), model, 0)
    assert out.abs().max() < 6 and 0.5 < out.std() < 1.5


def test_bf16_precision_runs_the_model_under_autocast_only():
    seen = []

    def fake(x, t, force_drop, **labels):
        seen.append((torch.is_autocast_enabled(x.device.type), x.dtype))
        return torch.zeros(x.shape[0], 2, x.shape[2])

    lab = {"age": torch.zeros(2)}
    d = GaussianDiffusion.linear(prediction="v")
    out = DDIMSampler(d, 5, precision="bf16").sample(fake, lab, V, torch.Generator())
    assert seen and all(enabled for enabled, _ in seen) and out.dtype == torch.float32
    seen.clear()
    DDIMSampler(d, 5).sample(fake, lab, V, torch.Generator())
    assert seen and not any(enabled for enabled, _ in seen)
    # a real model: bf16 samples stay close to fp32 ones (bf16 keeps ~3 significant digits)
    model = sampling_model()
    a = draw(DDIMSampler(d, 10), model, 0)
    b = draw(DDIMSampler(d, 10, precision="bf16"), model, 0)
    assert (a - b).abs().max() < 0.05 * a.abs().max() and not torch.equal(a, b)
    with pytest.raises(Exception, match="sampling precision 'fp16' is unknown"):
        DDIMSampler(d, 5, precision="fp16")
