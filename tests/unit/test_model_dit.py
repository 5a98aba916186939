"""The 1-D DiT: shapes and patch alignment, initialisation, positional embeddings, label
dropout, the zero-initialised fine-tuning surgeries (label tokens among them) and the analytic
FLOPs count."""

import copy
import logging
import math

import numpy as np
import pytest
import torch

from genbrain.model.dit import (
    PRESETS,
    TRAIN_FLOPS_FACTOR,
    DiT,
    build_dit,
    centroid3d_pos_embed,
    dit_from_spec,
    forward_flops,
    token_centroids,
)

V = 1000
N_MOD = 5



def perturb(model: DiT, seed: int = 0, std: float = 0.05) -> DiT:
    """Randomise every zero-initialised layer so that checks are not trivially 0 == 0."""
    g = torch.Generator().manual_seed(seed)
    layers = [b.adaLN_modulation[-1] for b in model.blocks]
    layers += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.add_(std * torch.randn(p.shape, generator=g))
    return model


def labels(n: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"age": torch.randn(n, generator=g), "sex": torch.randint(0, 2, (n,), generator=g),
            "modality": torch.randint(0, N_MOD, (n,), generator=g)}


def inputs(n: int, channels: int = 1, seed: int = 2) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, V, generator=g), torch.randint(0, 1000, (n,), generator=g)


def test_full_brain_shapes_and_patch_alignment():
    n_vox = 228_483
    model = build_dit("nano/256", n_vox)
    assert model.n_tokens == 893 and 893 * 256 - n_vox == 125
    x = torch.randn(1, 1, n_vox)
    lab = labels(1)
    t = torch.tensor([500])
    tokens = {}
    hook = model.x_embedder.register_forward_hook(lambda m, i, o: tokens.update(out=o))
    with torch.no_grad():
        assert model(x, t, **lab).shape == (1, 2, n_vox)
        base = tokens["out"]  # (1, D, T)
        assert base.shape == (1, 64, 893)
        for voxel, token in ((0, 0), (256 * 5 + 3, 5), (n_vox - 1, 892)):
            x2 = x.clone()
            x2[0, 0, voxel] += 1.0
            model(x2, t, **lab)
            changed = (tokens["out"] != base).any(dim=1)[0].nonzero().flatten().tolist()
            assert changed == [token]
    hook.remove()
    # Output side: a change in the last token's output lands on its 131 real voxels only.
    delta = torch.zeros(1, 893, 512)
    delta[0, 892] = 1.0
    model.final_layer.linear.register_forward_hook(lambda m, i, o: o + delta)
    with torch.no_grad():
        out = model(x, t, **lab)
    changed = (out != 0).nonzero()
    assert set(changed[:, 1].tolist()) == {0, 1}
    assert changed[:, 2].min() == 892 * 256 and changed[:, 2].max() == n_vox - 1
    assert len(changed) == 2 * 131


def test_zero_initialised_model_outputs_exactly_zero_until_perturbed():
    model = build_dit("tiny/256", V, n_modalities=N_MOD)
    x, t = inputs(3)
    out = model(x, t, **labels(3))
    assert out.shape == (3, 2, V) and torch.count_nonzero(out) == 0
    assert torch.count_nonzero(perturb(model)(x, t, **labels(3))) > 0


def dit_raster_reference(embed_dim: int, rows: int, cols: int) -> np.ndarray:
    """facebookresearch/DiT's get_2d_sincos_pos_embed, generalised to a rows x cols grid."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, rows, cols])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], 1)


def test_raster2d_pos_embed_is_fixed_and_matches_dit():
    n_vox = 40 * 256 - 7  # T = 40 tokens: one full row of 30 and a partial second row
    model = build_dit("nano/256", n_vox)
    pe = model.pos_embed
    assert pe.shape == (1, 40, 64) and not pe.requires_grad
    assert "pos_embed" in model.state_dict()
    assert all(p is not pe for p in model.parameters())
    ref = dit_raster_reference(64, rows=2, cols=30)[:40]
    np.testing.assert_allclose(pe[0].numpy(), ref, atol=1e-6)
    # token 31 = row 1, column 1: the first 32 dims encode the column, the last 32 the row
    np.testing.assert_allclose(pe[0, 31, :32], pe[0, 1, :32])
    np.testing.assert_allclose(pe[0, 31, 32:], pe[0, 30, 32:])


def test_centroid3d_pos_embed_and_token_centroids():
    coords = np.stack(np.unravel_index(np.arange(V), (10, 10, 10)), 1)  # (V, 3)
    cen = token_centroids(coords, 256)  # (4, 3)
    expected = [coords[i * 256:(i + 1) * 256].mean(0) for i in range(4)]
    np.testing.assert_allclose(cen, expected)
    model = build_dit("nano/256", V, pos_embed="centroid3d", token_centroids=torch.tensor(cen))
    pe = model.pos_embed[0].double().numpy()  # (4, 64): 22 + 22 + 20 dims for x, y, z
    for a, (lo, hi) in enumerate(((0, 22), (22, 44), (44, 64))):
        half = (hi - lo) // 2
        w = 10000.0 ** (-np.arange(half) / half)
        ref = np.concatenate([np.sin(cen[:, a:a + 1] * w), np.cos(cen[:, a:a + 1] * w)], 1)
        np.testing.assert_allclose(pe[:, lo:hi], ref, atol=1e-6)
    assert not model.pos_embed.requires_grad
    assert centroid3d_pos_embed(384, cen).shape == (4, 384)
    with pytest.raises(ValueError, match=r"token_centroids"):
        build_dit("nano/256", V, pos_embed="centroid3d")
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        build_dit("nano/256", V, pos_embed="centroid3d", token_centroids=cen[:3])
    with pytest.raises(ValueError, match=r"raster2d, centroid3d"):
        build_dit("nano/256", V, pos_embed="raster3d")


def test_build_dit_unknown_preset_names_the_choices():
    with pytest.raises(ValueError) as err:
        build_dit("XL/2", V)
    msg = str(err.value)
    assert "\n" not in msg and "'XL/2'" in msg
    assert all(name in msg for name in ("L/256", "B/256", "S/256", "demo/256", "tiny/256", "nano/256"))


def test_presets_sizes():
    with torch.device("meta"):  # shapes only, no memory
        n = {k: sum(p.numel() for p in build_dit(k, 228_483).parameters()) for k in PRESETS}
    assert 455e6 < n["L/256"] < 465e6  # the paper's ~460M
    assert n["L/256"] > n["B/256"] > n["S/256"] > n["demo/256"] > n["tiny/256"] > n["nano/256"]


def model_with_heads() -> DiT:
    model = perturb(build_dit("nano/256", V, n_modalities=N_MOD, label_dropout=0.5))
    model.add_disease_head(3)
    model.add_score_head()
    model.add_part_head(4)
    return perturb_heads(model)


def perturb_heads(model: DiT, seed: int = 3) -> DiT:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in (model.disease_embedder, model.score_embedder, model.part_embedder):
            for p in head.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


def full_labels(n: int) -> dict:
    g = torch.Generator().manual_seed(4)
    return {**labels(n), "disease": torch.randint(0, 3, (n,), generator=g),
            "score": torch.randn(n, generator=g), "part": torch.randint(0, 4, (n,), generator=g)}


def test_one_dropout_mask_drops_all_labels_together():
    model = model_with_heads().train()
    n = 16
    lab = full_labels(n)
    t = torch.randint(0, 1000, (n,))
    c, drop = model.condition(t, **lab, generator=torch.Generator().manual_seed(0))
    assert 0 < drop.sum() < n  # p = 0.5: both kinds of rows
    c_full, _ = model.condition(t, **lab, force_drop=torch.zeros(n, dtype=torch.bool))
    c_null, _ = model.condition(t, **lab, force_drop=torch.ones(n, dtype=torch.bool))
    assert torch.equal(c[drop], c_null[drop]) and torch.equal(c[~drop], c_full[~drop])
    # Null = the extra last row of every class table and standardised 0 for age and score.
    null = {"age": torch.zeros(n), "sex": torch.full((n,), 2), "modality": torch.full((n,), N_MOD),
            "disease": torch.full((n,), 3), "score": torch.zeros(n), "part": torch.full((n,), 4)}
    no_drop = torch.zeros(n, dtype=torch.bool)
    assert torch.equal(model.condition(t, **null, force_drop=no_drop)[0], c_null)
    # ... and each label matters, so dropping only some of them would be visible.
    for name, other in (("age", torch.ones(n)), ("sex", torch.zeros(n, dtype=torch.long)),
                        ("disease", torch.zeros(n, dtype=torch.long)), ("score", torch.ones(n))):
        c_other, _ = model.condition(t, **{**null, name: other}, force_drop=no_drop)
        assert not torch.allclose(c_other, c_null), name
    # Same generator seed, same mask.
    _, drop2 = model.condition(t, **lab, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drop, drop2)
    # Evaluation mode drops nothing unless asked.
    assert not model.eval().condition(t, **lab)[1].any()


def test_dropped_rows_ignore_image_conditioning_channels():
    model = perturb(build_dit("nano/256", V, n_modalities=N_MOD))
    model.widen_input(1)
    with torch.no_grad():
        model.x_embedder.weight[:, 1].normal_(std=0.05)  # as if trained
    x, t = inputs(4, channels=2)
    drop = torch.tensor([True, False, True, False])
    out = model(x, t, **labels(4), force_drop=drop)
    x0 = x.clone()
    x0[:, 1] = 0
    out0 = model(x0, t, **labels(4), force_drop=drop)
    assert torch.equal(out[drop], out0[drop]) and not torch.allclose(out[~drop], out0[~drop])


SURGERIES = ["disease", "score", "part", "extend_modalities", "widen_input"]


@pytest.mark.parametrize("surgery", SURGERIES)
def test_surgery_leaves_outputs_unchanged_at_init(surgery):
    model = perturb(build_dit("nano/256", V, n_modalities=N_MOD))
    x, t = inputs(4)
    lab = labels(4)
    drop = torch.tensor([False, True, False, False])
    before = model(x, t, **lab, force_drop=drop)
    assert torch.count_nonzero(before) > 0
    extra: dict = {}
    if surgery == "disease":
        model.add_disease_head(3)
        extra = {"disease": torch.tensor([0, 1, 2, 1])}
        new = model.disease_embedder.weight
    elif surgery == "score":
        model.add_score_head()
        extra = {"score": torch.tensor([-1.0, 0.5, 2.0, 0.0])}
        new = model.score_embedder.mlp[2].weight
    elif surgery == "part":
        model.add_part_head(4)
        extra = {"part": torch.tensor([3, 0, 1, 2])}
        new = model.part_embedder.weight
    elif surgery == "extend_modalities":
        old = model.modality_embedder.weight.detach().clone()
        model.extend_modalities(2)
        w = model.modality_embedder.weight
        assert w.shape[0] == N_MOD + 3 and torch.equal(w[:N_MOD], old[:N_MOD])
        assert torch.equal(w[-1], old[-1]) and torch.count_nonzero(w[N_MOD:N_MOD + 2]) == 0
        new = w
    else:
        model.widen_input(2)
        x = torch.cat([x, torch.randn(4, 2, V)], dim=1)
        new = model.x_embedder.weight
    after = model(x, t, **lab, **extra, force_drop=drop)
    assert after.shape == before.shape
    if surgery == "widen_input":  # a conv over more channels may sum in another order
        torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    else:
        assert torch.equal(after, before)
    # The new weights are wired in: they receive gradient.
    after.square().sum().backward()
    grad = new.grad[:, 1:] if surgery == "widen_input" else new.grad
    assert torch.count_nonzero(grad) > 0
    if surgery == "extend_modalities":  # and a new modality index can be used
        out = model(x, t, **{**lab, "modality": torch.full((4,), N_MOD + 1)})
        assert out.shape == before.shape


def test_head_label_without_head_is_an_error():
    model = build_dit("nano/256", V, n_modalities=N_MOD)
    x, t = inputs(2)
    with pytest.raises(ValueError, match="no disease head"):
        model(x, t, **labels(2), disease=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, 1, 1000\)"):
        model(torch.zeros(2, 1, V + 1), t, **labels(2))


def test_spec_rebuilds_the_model_with_its_heads():
    model = model_with_heads()
    model.extend_modalities(1)
    model.widen_input(1)
    clone = dit_from_spec(copy.deepcopy(model.spec()))
    clone.load_state_dict(model.state_dict())  # strict: same modules, same shapes
    x, t = inputs(2, channels=2)
    lab = full_labels(2)
    assert torch.equal(clone.eval()(x, t, **lab), model.eval()(x, t, **lab))
    assert math.isclose(clone.label_dropout, 0.5)


# ------------------------------------------------------------------ label tokens


def test_label_tokens_start_at_zero_and_never_reach_the_null_branch():
    model = model_with_heads().eval()
    x, t = inputs(4)
    lab = full_labels(4)
    drop = torch.tensor([False, True, False, False])
    every = torch.ones(4, dtype=torch.bool)
    calls = {"labelled": ({**lab}, drop), "null": (labels(4), None),  # no disease, no score
             "dropped": ({**lab}, every),
             "null_disease": ({**lab, "disease": torch.full((4,), 3)}, drop)}  # the null row
    with torch.no_grad():
        before = {k: model(x, t, **a, force_drop=d) for k, (a, d) in calls.items()}
    model.add_label_tokens()
    assert model.disease_tokens.shape == (3, model.n_tokens, 64)
    assert model.score_tokens.shape == (model.n_tokens, 64) and model.spec()["label_tokens"]
    with torch.no_grad():  # zero-initialised: bitwise the model before the surgery
        for k, (a, d) in calls.items():
            assert torch.equal(model(x, t, **a, force_drop=d), before[k]), k
    # as if trained: the labelled rows move; dropped rows, null or absent labels do not
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.disease_tokens.normal_(generator=g)
        model.score_tokens.normal_(generator=g)
        after = {k: model(x, t, **a, force_drop=d) for k, (a, d) in calls.items()}
    for k in ("null", "dropped"):
        assert torch.equal(after[k], before[k]), k
    assert torch.equal(after["labelled"][drop], before["labelled"][drop])
    assert not torch.allclose(after["labelled"][~drop], before["labelled"][~drop])
    # a null disease label adds no disease tokens; its score tokens still count
    model.score_tokens.data.zero_()
    with torch.no_grad():
        assert torch.equal(model(x, t, **calls["null_disease"][0], force_drop=drop),
                           before["null_disease"])


def test_label_tokens_train_and_take_only_their_own_label():
    model = build_dit("nano/256", V, n_modalities=N_MOD)
    model.add_disease_head(2)
    model.add_label_tokens()
    assert model.score_tokens is None  # no score head, no score tokens
    perturb(model)
    x, t = inputs(3)
    out = model(x, t, **labels(3), disease=torch.tensor([1, 1, 0]),
                force_drop=torch.tensor([False, True, False]))
    out.square().sum().backward()
    grad = model.disease_tokens.grad  # (2, T, D)
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() > 0
    # only sample 0 carries level 1: its grad is that sample's alone, the dropped one adds 0
    model.zero_grad()
    model(x[:1], t[:1], **{k: v[:1] for k, v in labels(3).items()},
          disease=torch.tensor([1]), force_drop=torch.tensor([False])).square().sum().backward()
    torch.testing.assert_close(model.disease_tokens.grad[1], grad[1])


def test_label_tokens_survive_the_spec_and_an_older_spec_loads_without_them():
    model = model_with_heads()
    model.add_label_tokens()
    with torch.no_grad():
        model.disease_tokens.normal_(std=0.5)
        model.score_tokens.normal_(std=0.5)
    clone = dit_from_spec(copy.deepcopy(model.spec()))
    clone.load_state_dict(model.state_dict())  # strict: the same parameters
    x, t = inputs(2)
    lab = full_labels(2)
    assert torch.equal(clone.eval()(x, t, **lab), model.eval()(x, t, **lab))
    old = model_with_heads()
    spec = old.spec()
    del spec["label_tokens"]  # a checkpoint written before the key
    rebuilt = dit_from_spec(spec)
    assert not rebuilt.label_tokens and rebuilt.disease_tokens is None
    rebuilt.load_state_dict(old.state_dict())
    # a head added after the surgery gets its tokens, so the spec still describes the model
    late = build_dit("nano/256", V, n_modalities=N_MOD)
    late.add_disease_head(2)
    late.add_label_tokens()
    late.add_score_head()
    assert late.score_tokens is not None and not late.score_tokens.any()
    dit_from_spec(late.spec()).load_state_dict(late.state_dict())


def test_label_tokens_need_a_head_and_follow_bf16_autocast():
    with pytest.raises(ValueError, match="needs a disease or score head"):
        build_dit("nano/256", V, n_modalities=N_MOD).add_label_tokens()
    model = model_with_heads()
    model.add_label_tokens()
    with torch.no_grad():
        model.disease_tokens.normal_()
    x, t = inputs(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, **full_labels(2))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ------------------------------------------------------------------ modality templates


def templated(seed: int = 4) -> DiT:
    model = perturb(build_dit("nano/256", V, n_modalities=N_MOD, modality_templates=True))
    g = torch.Generator().manual_seed(seed)
    for m in range(N_MOD):
        model.set_modality_template(m, torch.randn(V, generator=g))
    return model


def test_modality_templates_enter_the_tokens_of_their_modality_only():
    model = templated()
    x, t = inputs(4)
    lab = labels(4)
    lab["modality"] = torch.tensor([0, 1, 2, 3])
    drop = torch.tensor([False, False, True, False])
    out = model(x, t, **lab, force_drop=drop)
    seen = {}
    hook = model.template_embedder.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    model(x, t, **lab, force_drop=drop)
    hook.remove()
    tmpl = seen["inp"][:, 0, :V]  # (N, V): what the embedder was given
    for i in (0, 1, 3):
        assert torch.equal(tmpl[i], model.modality_templates[int(lab["modality"][i])])
    assert torch.count_nonzero(tmpl[2]) == 0  # a dropped (null) row takes the zero template
    # changing modality 1's template changes row 1's output and nothing else
    model.set_modality_template(1, torch.zeros(V))
    assert not model.has_modality_template(1) and model.has_modality_template(0)
    out2 = model(x, t, **lab, force_drop=drop)
    same = [torch.equal(out[i], out2[i]) for i in range(4)]
    assert same == [True, False, True, True]


def test_modality_templates_survive_spec_state_dict_and_extension():
    model = templated()
    model.extend_modalities(2)
    assert model.modality_templates.shape == (N_MOD + 3, V)
    assert not model.has_modality_template(N_MOD) and not model.has_modality_template(N_MOD + 2)
    clone = dit_from_spec(copy.deepcopy(model.spec()))
    clone.load_state_dict(model.state_dict())  # strict: the buffer and embedder are there
    assert torch.equal(clone.modality_templates, model.modality_templates)
    x, t = inputs(2)
    lab = labels(2)
    assert torch.equal(clone.eval()(x, t, **lab), model.eval()(x, t, **lab))
    # a model without templates has neither the buffer nor the embedder in its state dict
    plain = build_dit("nano/256", V, n_modalities=N_MOD)
    assert not any("template" in k for k in plain.state_dict())
    assert dit_from_spec(plain.spec()).template_embedder is None


def test_set_modality_template_errors():
    plain = build_dit("nano/256", V, n_modalities=N_MOD)
    with pytest.raises(ValueError, match="built without modality_templates"):
        plain.set_modality_template(0, np.zeros(V))
    model = templated()
    with pytest.raises(ValueError, match=r"modality index 5 is outside the model's table \(0..4\)"):
        model.set_modality_template(N_MOD, np.zeros(V))
    with pytest.raises(ValueError, match="template has 999 voxels; the model has 1000"):
        model.set_modality_template(0, np.zeros(V - 1))


# --------------------------------------------------------------------------------------------
# torch.compile of the blocks


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_compiled_blocks_match_eager_and_keep_the_state_dict_keys(caplog):
    model = perturb(build_dit("tiny/256", V, N_MOD)).eval()
    eager = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert model.compile_blocks() is False and not model.blocks_compiled  # auto: off on CPU
    assert model.compile_blocks(True) and model.blocks_compiled
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix
    x, t = inputs(3)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        out, ref = model(x, t, **labels(3)), eager(x, t, **labels(3))
    assert ref.abs().max() > 0.1
    if model.blocks_compiled:  # torch.compile works here (a C compiler is installed)
        assert _warnings(caplog) == []
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    else:  # it fell back: one warning, then the eager arithmetic exactly
        assert len(_warnings(caplog)) == 1 and "running them eager" in _warnings(caplog)[0]
        assert torch.equal(out, ref)
    assert list(model.state_dict()) == keys
    assert model.compile_blocks(False) is False and not model.blocks_compiled


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no working C compiler (simulated)")


def test_a_failing_compilation_warns_once_and_runs_eager(caplog):
    model = perturb(build_dit("nano/256", V, N_MOD)).eval()
    eager = copy.deepcopy(model)
    assert model.compile_blocks(True, backend=_failing_backend)
    x, t = inputs(2)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        first = model(x, t, **labels(2))
        one = {k: v[:1] for k, v in labels(2).items()}
        second = model(x[:1], t[:1], **one)
        ref, ref1 = eager(x, t, **labels(2)), eager(x[:1], t[:1], **one)
    [message] = _warnings(caplog)
    assert "\n" not in message and "simulated" in message and "running them eager" in message
    assert not model.blocks_compiled
    assert torch.equal(first, ref) and torch.equal(second, ref1)


# -------------------------------------------------------------------------------- FLOPs

V_BRAIN = 228_483  # the 2 mm MNI mask: 893 tokens of 256


def test_forward_flops_of_the_paper_model():
    """L/256 on the brain: 619.46 GFLOP per image forward, with issue 33's breakdown."""
    parts = forward_flops(V_BRAIN, **PRESETS["L/256"])
    expected = {"mlp": 359.6e9, "qkv": 134.8e9, "proj": 44.9e9, "attention": 78.4e9,
                "final": 0.94e9, "patch": 0.47e9, "adaLN": 0.31e9}
    for name, value in expected.items():
        assert parts[name] == pytest.approx(value, rel=0.01), name
    assert sum(parts.values()) == pytest.approx(619.46e9, rel=1e-3)


def test_forward_flops_agree_with_torch_flop_counter():
    """The formula against FlopCounterMode on the tiny preset at the brain's size, heads,
    templates and an extra input channel included; a training step (forward + backward) is
    TRAIN_FLOPS_FACTOR x the forward less the patch convolutions' input gradient, which is
    never taken (the input needs none; 1.8% of a step here, 0.03% for L/256). Attention runs on
    SDPA's math path: FlopCounterMode has no formula for the CPU flash kernel and would count
    attention (~half of tiny's FLOPs) as zero."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_dit("tiny/256", V_BRAIN, N_MOD, modality_templates=True)
    model.add_score_head()
    model.widen_input(1)
    n = 2
    x = torch.randn(n, 2, V_BRAIN)
    t = torch.randint(0, 1000, (n,))
    analytic = sum(model.flops_per_image().values())
    assert model.flops_per_image()["attention"] > 0.4 * analytic  # the part at stake
    forward = FlopCounterMode(display=False)
    with forward, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(x, t, score=torch.randn(n), **labels(n))
    assert forward.get_total_flops() / n == pytest.approx(analytic, rel=1e-3)
    training = FlopCounterMode(display=False)
    with training, sdpa_kernel(SDPBackend.MATH):
        model(x, t, score=torch.randn(n), **labels(n)).square().mean().backward()
    patch = model.flops_per_image()["patch"]
    assert training.get_total_flops() / n == pytest.approx(
        TRAIN_FLOPS_FACTOR * analytic - patch, rel=1e-4)
