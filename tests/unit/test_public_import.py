"""Importing a public GenBrain checkpoint, and voxel layouts.

The public model is ``benchmarks/_public_dit.py``'s ``PublicDiT`` (the public DiT_UKB's
modules) at a tiny size (nano widths: depth 2, hidden 64, 2 heads; patch 16 on 512 voxels, 32
tokens) with every weight random and non-zero, the zero-initialised adaLN and output layers
included, so no output is trivially 0. Its state dict is written in both spellings the
importer accepts: ``benchmark`` (PublicDiT's own keys) and ``public`` (the GenBrain
repository's ``x_embedder.proj`` / ``y1..y3_embedder`` keys, whose age embedder z-scores raw
years inside the model with data_info.json's mean/std: PublicDiT fed the z-scored age computes
exactly that network).
"""

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from genbrain import space
from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.layout import (
    FSL_FLIP,
    KNOWN_SHA256,
    PUBLIC,
    STANDARD,
    VoxelLayout,
    check_same,
    convert,
    derived_public_layout,
    layout_from_image,
    layout_of,
    public_layout,
    standard_layout,
)
from genbrain.model.dit import dit_from_spec, raster2d_pos_embed
from genbrain.model.public import (
    convert_public_checkpoint,
    import_public_checkpoint,
    main,
    public_pos_embed,
    read_public_checkpoint,
)
from genbrain.store import write_shard
from genbrain.training.checkpoints import load_for_sampling
from genbrain.training.config import TrainConfig
from genbrain.training.loop import train
from tests.public_checkpoint import (
    AGE,
    DEPTH,
    HEADS,
    N_MOD,
    D,
    PublicDiT,
    full_size_model,
    spelled,
    write_full_size,
)

V, P = 512, 16
FSL_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# A public checkpoint with random weights
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mask() -> np.ndarray:
    """512 scattered grid voxels (boolean, our grid)."""
    mask = np.zeros(space.SHAPE, bool)
    flat = np.random.default_rng(0).choice(mask.size, V, replace=False)
    mask.reshape(-1)[flat] = True
    return mask


@pytest.fixture(scope="module")
def small_layout(small_mask) -> VoxelLayout:
    return VoxelLayout(name="custom:small", source="test", mask=small_mask, flip=FSL_FLIP)


def public_model(seed: int) -> PublicDiT:
    """A PublicDiT with every trainable weight random (std 0.1: outputs of order 1, so float32
    rounding stays near 1e-6) and the public pos_embed."""
    torch.manual_seed(seed)
    model = PublicDiT(V, D, DEPTH, HEADS, patch_size=P, n_modalities=N_MOD,
                      class_dropout_prob=0.1, fused_attn=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape) * 0.1)
        model.pos_embed.copy_(torch.tensor(public_pos_embed(D, V // P)).float().unsqueeze(0))
    return model.eval()


def write_public(tmp_path: Path, dialect: str, model: PublicDiT, ema: PublicDiT) -> Path:
    """{model, ema, opt, args} as the public training script saves it, epoch 200."""
    info = tmp_path / "data_info.json"
    info.write_text(json.dumps({"Condition Data": {"age_info": AGE, "sex_num": 2,
                                                   "modality_mum": N_MOD}}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    args = argparse.Namespace(model="DiT-UKB-nano", data_info=str(info),
                              global_batch_size=192, global_seed=0, epochs=200)
    path = tmp_path / "0000200.pt"
    torch.save({"model": spelled(model.state_dict(), dialect),
                "ema": spelled(ema.state_dict(), dialect), "opt": opt.state_dict(),
                "args": args}, path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """The mask as FSL stores its templates: x from +90 to -90 mm (affine x = -2)."""
    nib.save(nib.Nifti1Image(np.flip(mask, 0).astype(np.uint8), FSL_AFFINE), path)
    return path


def inputs(seed: int = 1) -> dict:
    """Six samples. Rows 0-2: ordinary labels. Rows 3-4: the null branch (force_drop), which
    in the public model zeroes the *normalised* age and takes sex row 2 and the last modality
    row: in ours standardised age 0 and the null rows, given the same drop mask. Row 5: what
    the public sampling scripts pass for "unknown" (raw age 0, sex 2, not dropped): normalised
    age -mean/std with the null sex row; ours is reached with age 0 years and sex index 2."""
    g = torch.Generator().manual_seed(seed)
    years = torch.tensor([45.0, 62.5, 71.0, 58.0, 80.0, 0.0])
    return {"x": torch.randn(6, 1, V, generator=g),
            "t": torch.tensor([0, 17, 250, 500, 999, 640]),
            "years": years, "z": (years - AGE["mean"]) / AGE["std"],
            "sex_ukb": torch.tensor([0, 1, 0, 1, 2, 2]),  # UKB field 31: 0 female, 1 male
            "sex_ours": torch.tensor([1, 0, 1, 0, 2, 2]),  # genbrain: M 0, F 1, null 2
            "modality": torch.tensor([0, 1, 2, 0, 1, 2]),
            "drop": torch.tensor([False, False, False, True, True, False])}


@torch.no_grad()
def public_out(model: PublicDiT, b: dict, dialect: str) -> torch.Tensor:
    # the public spelling's model z-scores years itself (PublicDiT fed z computes exactly
    # that); the benchmark one takes its input as is, and is fed years
    age = b["z"] if dialect == "public" else b["years"]
    return model(b["x"], b["t"], age, b["sex_ukb"], b["modality"], force_drop=b["drop"])


@torch.no_grad()
def our_out(model, b: dict, norms: dict, sex: str = "sex_ours") -> torch.Tensor:
    age = (b["years"] - norms["age"]["mean"]) / norms["age"]["std"]  # the pipeline's z-score
    return model(b["x"], b["t"], age, b[sex], b["modality"], force_drop=b["drop"])


@pytest.mark.parametrize("dialect", ["public", "benchmark"])
def test_imported_model_computes_the_public_models_outputs(tmp_path, small_mask, small_layout,
                                                           dialect, capsys):
    base, base_ema = public_model(0), public_model(1)
    ckpt = write_public(tmp_path, dialect, base, base_ema)
    mask = write_mask(tmp_path / "mask.nii.gz", small_mask)
    out = tmp_path / "genbrain.pt"
    assert main(["--checkpoint", str(ckpt), "--mask", str(mask), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out

    b = inputs()
    model, norms, cfg = load_for_sampling(out)  # default: the public code's "model" weights
    expected = public_out(base, b, dialect)
    got = our_out(model, b, norms)
    assert expected.shape == got.shape == (6, 2, V)
    assert expected.abs().mean() > 0.1  # random adaLN/final layers: not trivially zero
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the null rows really are another branch than the same labels undropped
    undropped = model(b["x"], b["t"], b["z"], b["sex_ours"], b["modality"])
    assert (undropped[3:5] - got[3:5]).abs().max() > 1e-2
    ema, _, _ = load_for_sampling(out, weights="ema")
    torch.testing.assert_close(our_out(ema, b, norms), public_out(base_ema, b, dialect),
                               atol=1e-5, rtol=1e-5)

    config = torch.load(out, weights_only=True)["config"]
    assert norms["age"] == (AGE if dialect == "public" else {"mean": 0.0, "std": 1.0})
    assert (cfg.preset, cfg.patch_size, cfg.sampling_weights) == ("nano/256", P, "model")
    assert config["model"]["n_voxels"] == V and config["model"]["n_modalities"] == N_MOD
    # the mask file's voxels in FSL's array order (x descending), re-readable from the record
    assert config["layout"]["flip"] == [True, False, False]
    assert config["layout"]["name"] == "custom:mask.nii.gz"
    assert VoxelLayout.from_dict(config["layout"]) == small_layout
    assert config["public_import"]["epoch"] == 200
    # T = 32 tokens: the public grid is 6 wide, not our 30, so pos_embed is carried over
    assert config["public_import"]["pos_embed"].startswith("carried")
    assert torch.equal(model.pos_embed, base.pos_embed)


def test_sex_rows_are_recoded_from_uk_biobank(small_layout):
    """Without the swap (a checkpoint claimed to be in our coding) female and male exchange."""
    base = public_model(0)
    ckpt = {"model": spelled(base.state_dict(), "public"), "args": None}
    b = inputs()
    expected = public_out(base, b, "public")
    for coding, sex, equal in (("ukb", "sex_ours", True), ("genbrain", "sex_ours", False),
                               ("genbrain", "sex_ukb", True)):
        conv = convert_public_checkpoint(ckpt, small_layout, age_norm=AGE, sex_coding=coding)
        model = dit_from_spec(conv["config"]["model"])
        model.load_state_dict(conv["model"])
        got = our_out(model.eval(), b, conv["config"]["norms"], sex=sex)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5) == equal, coding


def test_public_pos_embed_is_our_raster2d_at_the_paper_size():
    """T = 893 tokens: the public square grid is int(sqrt(893)) + 1 = 30 wide, our raster."""
    np.testing.assert_allclose(public_pos_embed(1024, 893), raster2d_pos_embed(1024, 893),
                               rtol=0, atol=1e-12)
    assert not np.allclose(public_pos_embed(D, 32), raster2d_pos_embed(D, 32))


def test_bad_checkpoints_are_refused_in_one_line(tmp_path, small_mask, small_layout, capsys):
    base = public_model(0)
    state = spelled(base.state_dict(), "public")
    bad = dict(state)
    bad["blocks.1.attn.proj.weight"] = torch.zeros(D, D - 1)
    with pytest.raises(GenbrainInputError) as err:
        convert_public_checkpoint({"model": bad}, small_layout, age_norm=AGE, source="x.pt")
    assert one_line(err) == ("x.pt (model): tensor 'blocks.1.attn.proj.weight' has shape "
                             "(64, 63); expected (64, 64) for depth 2, hidden 64, patch 16, "
                             "3 modalities")
    no_null = dict(state, **{"y2_embedder.embedding_table.weight": torch.zeros(2, D)})
    with pytest.raises(GenbrainInputError, match=r"'y2_embedder.embedding_table.weight' has "
                       r"shape \(2, 64\); expected \(3, 64\)"):
        convert_public_checkpoint({"model": no_null}, small_layout, age_norm=AGE)
    extra = dict(state, **{"y4_embedder.embedding_table.weight": torch.zeros(3, D)})
    with pytest.raises(GenbrainInputError, match="unexpected tensor 'y4_embedder"):
        convert_public_checkpoint({"model": extra}, small_layout, age_norm=AGE)
    # a mask of another size gives another token count than the model's pos_embed
    wider = small_mask.copy()
    wider.reshape(-1)[np.flatnonzero(~wider.reshape(-1))[:P]] = True
    with pytest.raises(GenbrainInputError, match="pos_embed' has 32 tokens, but the mask's 528"):
        convert_public_checkpoint({"model": state}, VoxelLayout("w", "w", wider), age_norm=AGE)
    with pytest.raises(GenbrainInputError, match="--data-info"):
        convert_public_checkpoint({"model": state}, small_layout)  # no age scaling anywhere

    # the CLI: one line on stderr, exit status 2, no traceback
    path = tmp_path / "bad.pt"
    torch.save({"model": bad, "args": argparse.Namespace(model="DiT-UKB-nano")}, path)
    mask = write_mask(tmp_path / "mask.nii.gz", small_mask)
    assert main(["--checkpoint", str(path), "--mask", str(mask), "--out",
                 str(tmp_path / "o.pt"), "--age-mean", "60", "--age-std", "8"]) == 2
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "Traceback" not in printed
    assert printed.startswith(f"error: {path} (model): tensor 'blocks.1.attn.proj.weight'")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GenbrainInputError, match="junk.pt: not a readable checkpoint"):
        read_public_checkpoint(tmp_path / "junk.pt")
    assert not (tmp_path / "o.pt").exists()


def test_layout_names_resolve_at_the_paper_size(tmp_path, monkeypatch, caplog):
    """``--mask fsl-t1-brain-nonzero`` finds or derives the public layout (228,453 voxels, 893
    tokens of 256). Our standard mask also makes 893 tokens, so the weights cannot tell the
    wrong mask: the import warns instead."""
    monkeypatch.delenv("FSLDIR", raising=False)
    base = full_size_model(random=False)  # pos_embed as DiT_UKB.initialize_weights sets it
    path = tmp_path / "0000001.pt"
    torch.save({"model": spelled(base.state_dict(), "public"), "ema": base.state_dict(),
                "args": argparse.Namespace(model="x")}, path)
    with pytest.raises(GenbrainInputError, match="'model' and 'ema' use different key names"):
        import_public_checkpoint(path, PUBLIC, tmp_path / "o.pt", age_norm=AGE)
    torch.save({"model": spelled(base.state_dict(), "public"), "args": None}, path)
    out = import_public_checkpoint(path, PUBLIC, tmp_path / "o.pt", age_norm=AGE)
    config = torch.load(out, weights_only=True)["config"]
    assert config["layout"] == public_layout().to_dict() and not caplog.records
    assert config["public_import"]["pos_embed"].startswith("raster2d")  # T = 893: 30 wide
    assert config["public_import"]["ema_in_checkpoint"] is False
    import_public_checkpoint(path, STANDARD, tmp_path / "s.pt", age_norm=AGE)
    assert "is not the fsl-t1-brain-nonzero layout" in caplog.text


def test_an_imported_checkpoint_fine_tunes(tmp_path, small_layout):
    """``train(init_checkpoint=...)`` takes it: the age scaling is inherited and, with
    new-modules-only, the imported weights stay exactly as imported."""
    conv = convert_public_checkpoint({"model": spelled(public_model(0).state_dict(), "public")},
                                     small_layout, age_norm=AGE)
    init = tmp_path / "imported.pt"
    torch.save(conv, init)
    root = tmp_path / "store"
    root.mkdir()
    rng = np.random.default_rng(0)
    write_shard(rng.standard_normal((4, V)), root / "T1w.npy", "float32")
    save_tsv(pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(4)], "site": "a",
                           "age": [50.0, 60.0, 70.0, 80.0], "sex": ["M", "F"] * 2,
                           "modality": "T1w", "modality_index": 0, "shard": "T1w.npy",
                           "row": range(4), "diagnosis": ["CN", "SCZ"] * 2}),
             root / "index.tsv")
    cfg = TrainConfig(preset="nano/256", patch_size=P, n_modalities=N_MOD, steps=1,
                      global_batch=2, lr=1e-2, finetune="new-modules-only",
                      diagnosis_levels=["CN", "SCZ"], sampling_weights="model",
                      checkpoint_every=1000, log_every=1000)
    tuned = train(cfg, root / "index.tsv", tmp_path / "tuned", init_checkpoint=init,
                  surgeries=[("add_disease_head", 2)]).checkpoint
    state = torch.load(tuned, weights_only=True)
    assert state["config"]["norms"]["age"] == AGE
    assert state["model"]["disease_embedder.weight"].abs().max() > 0  # the new head learned
    for key, value in conv["model"].items():
        assert torch.equal(state["model"][key], value), key


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def test_layout_hashes_and_sizes_are_stable(monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    std, pub = standard_layout(), public_layout()
    assert (std.name, std.n_voxels, std.flip) == (STANDARD, 228_483, (False, False, False))
    assert (pub.name, pub.n_voxels, pub.flip) == (PUBLIC, 228_453, (True, False, False))
    # literal values: a change of the hashing scheme or of the masks must fail here
    assert std.sha256 == "6a004d3536cc430f3d7792a3216dda55eb97ff65df751ce2175b7076f54f44c4"
    assert pub.sha256 == "ee972b560d735197c828f1dcbd4674d6f0d3da269abba8db986fdb20afcab9e8"
    assert KNOWN_SHA256 == {STANDARD: std.sha256, PUBLIC: pub.sha256}
    assert pub == derived_public_layout() and pub.source.startswith("derived")
    # the 30 voxels the public layout lacks are the brain mask's bottom slice
    assert np.array_equal(std.mask & ~pub.mask, std.mask & (np.arange(91) == 0)[None, None])


def test_layout_from_an_fsl_oriented_file(tmp_path, small_mask, small_layout):
    layout = layout_from_image(write_mask(tmp_path / "m.nii.gz", small_mask))
    assert layout == small_layout and layout.flip == FSL_FLIP
    assert layout.name == "custom:m.nii.gz"
    # vector order = C order of the file's array, as ``data[nib.load(mask).get_fdata() != 0]``
    vol = np.random.default_rng(2).standard_normal(space.SHAPE)  # on our grid
    stored = np.flip(vol, 0)  # the same image as FSL stores it
    np.testing.assert_array_equal(layout.to_vector(vol), stored[np.flip(small_mask, 0)])
    # nimare's +x orientation of the same mask is the same voxels in another order
    nib.save(nib.Nifti1Image(small_mask.astype(np.uint8), space.AFFINE), tmp_path / "p.nii.gz")
    plus = layout_from_image(tmp_path / "p.nii.gz")
    assert plus.n_voxels == V and plus != layout
    np.testing.assert_array_equal(plus.to_vector(vol), vol[small_mask])


def test_convert_round_trip_between_standard_and_public_layouts():
    std, pub = standard_layout(), derived_public_layout()
    x = np.random.default_rng(3).standard_normal((2, std.n_voxels)).astype(np.float32)
    y = convert(x, std, pub)
    assert y.shape == (2, 228_453) and y.dtype == np.float32
    # the same as scattering to 3-D and gathering the other layout's voxels in its order
    np.testing.assert_array_equal(y, pub.to_vector(std.to_volume(x)))
    back = convert(y, pub, std)
    shared = pub.mask[std.mask]  # (V_std,) which standard voxels the public layout holds
    assert shared.sum() == 228_453
    np.testing.assert_array_equal(back[:, shared], x[:, shared])  # shared voxels: unchanged
    assert not back[:, ~shared].any()  # the 30 voxels the public layout lacks: zeros
    np.testing.assert_array_equal(convert(back, std, pub), y)  # pub -> std -> pub is exact
    assert convert(x, std, std) is x
    with pytest.raises(GenbrainInputError, match="have 228453 voxels; layout fsl-brain-mask"):
        convert(y, std, pub)


def test_layout_checks_and_records(small_layout):
    std, pub = standard_layout(), derived_public_layout()
    with pytest.raises(GenbrainInputError) as err:
        check_same(pub, std, "checkpoint", "the store")
    assert one_line(err).startswith("checkpoint layout fsl-t1-brain-nonzero has 228,453 "
                                    "voxels; the store has 228,483 (layout fsl-brain-mask): "
                                    "convert with genbrain.layout.convert(")
    same_count = VoxelLayout("flipped", "test", std.mask, flip=FSL_FLIP)
    with pytest.raises(GenbrainInputError, match="both have 228,483 voxels but differ"):
        check_same(std, same_count)
    check_same(std, standard_layout())
    assert VoxelLayout.from_dict(pub.to_dict()) == pub
    assert VoxelLayout.from_dict(std.to_dict()) == std
    tampered = dict(std.to_dict(), sha256="0" * 64)
    with pytest.raises(GenbrainInputError, match="recorded with sha256 000000000000"):
        VoxelLayout.from_dict(tampered, "ckpt.pt")
    assert layout_of({"model": {"n_voxels": 228_483}}) == std
    assert layout_of({"layout": pub.to_dict(), "model": {"n_voxels": 228_453}}) == pub
    with pytest.raises(GenbrainInputError, match="records no voxel layout"):
        layout_of({"model": {"n_voxels": V}})


# --------------------------------------------------------------------------------------------
# An imported checkpoint on the pipeline's stores (standard layout)
# --------------------------------------------------------------------------------------------


def full_size_import(tmp_path: Path) -> Path:
    """A public nano DiT_UKB (patch 256, 893 tokens) on the public layout, random weights,
    written in the public code's format and imported with the project's converter."""
    return import_public_checkpoint(write_full_size(tmp_path / "0000001.pt"), PUBLIC,
                                    tmp_path / "imported.pt", age_norm=AGE)


def standard_store(root: Path, n: int = 4) -> Path:
    """A store of the pipeline's (standard layout, 228,483 voxels) with ``n`` T1w images."""
    root.mkdir()
    rng = np.random.default_rng(0)
    write_shard(rng.standard_normal((n, 228_483)).astype(np.float32), root / "T1w.npy",
                "float16")
    save_tsv(pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(n)], "site": "a",
                           "age": np.linspace(50.0, 80.0, n), "sex": ["M", "F"] * (n // 2),
                           "modality": "T1w", "modality_index": 0, "shard": "T1w.npy",
                           "row": range(n), "diagnosis": ["CN", "SCZ"] * (n // 2)}),
             root / "index.tsv")
    return root / "index.tsv"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    return full_size_import(tmp_path_factory.mktemp("imported"))


def test_an_imported_checkpoint_fine_tunes_on_a_standard_store(tmp_path, imported, caplog,
                                                                monkeypatch):
    """The store's 228,483-voxel vectors reach the public-layout model converted (one log
    line naming both layouts); the fine-tune keeps the model's layout, and the batches the
    model sees are the store's images in the public layout."""
    monkeypatch.delenv("FSLDIR", raising=False)
    index = standard_store(tmp_path / "store")
    cfg = TrainConfig(preset="nano/256", n_modalities=N_MOD, steps=2, global_batch=2,
                      finetune="new-modules-only", diagnosis_levels=["CN", "SCZ"],
                      sampling_weights="model", checkpoint_every=1000, log_every=1000)
    caplog.set_level("INFO", logger="genbrain.layout")
    tuned = train(cfg, index, tmp_path / "tuned", init_checkpoint=imported).checkpoint
    state = torch.load(tuned, weights_only=True)
    assert state["config"]["layout"] == public_layout().to_dict()
    assert state["config"]["model"]["n_voxels"] == 228_453
    lines = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert len(lines) == 1 and "fsl-brain-mask (228,483 voxels" in lines[0]
    assert "-> fsl-t1-brain-nonzero (228,453 voxels" in lines[0]
    # the items a model of that layout reads: the store's images, converted
    from genbrain.store import ImageStore
    from genbrain.training.data import VoxelDataset
    store = ImageStore(index)
    data = VoxelDataset([store])
    data.to_model(state["config"], "the fine-tune")
    x = data.__getitems__([1, 3])["x"][:, 0].float().numpy()  # (2, 228,453)
    want = convert(store.rows(np.array([1, 3])), standard_layout(), public_layout())
    np.testing.assert_array_equal(x, want.astype(np.float32))
    assert data.n_voxels == 228_453


def test_an_imported_checkpoint_end_to_end_writes_standard_space(tmp_path, imported,
                                                                 monkeypatch):
    """Public format -> import -> fine-tune on a standard store -> synthesis -> audit ->
    export: the synthetic store holds standard-layout vectors, and the exported NIfTI are the
    model's public-layout samples placed on the standard grid (same affine and shape, zero
    outside the brain mask, zero on the 30 mask voxels the public layout lacks)."""
    from genbrain.audit import memorisation_audit, privacy_gate
    from genbrain.export import export_cohort
    from genbrain.sampling import SamplingConfig, sample_table
    from genbrain.store import ImageStore, merge_indices
    from genbrain.synthesize import synthesize_shard
    from tests.unit.test_sampling import REG  # T1w = modality index 0

    monkeypatch.delenv("FSLDIR", raising=False)
    index = standard_store(tmp_path / "store")
    cfg = TrainConfig(preset="nano/256", n_modalities=N_MOD, steps=2, global_batch=2,
                      finetune="new-modules-only", diagnosis_levels=["CN", "SCZ"],
                      sampling_weights="model", checkpoint_every=1000, log_every=1000)
    tuned = train(cfg, index, tmp_path / "tuned", init_checkpoint=imported).checkpoint
    assert torch.load(tuned, weights_only=True)["config"]["layout"]["name"] == PUBLIC

    # the fine-tune checks: one-step and paired-sample maps in the standard layout
    from genbrain.finetune import finetune_checks
    checks, maps = finetune_checks(tuned, index, pd.DataFrame({"participant_id": [
        f"sub-{i}" for i in range(4)]}), paired_samples=1, registry=REG,
        sampling=SamplingConfig(steps=2, batch_size=2, seed=3))
    got = checks.set_index(["check", "contrast"])["value"]
    assert np.isfinite(got[("disease_effect_vs_site", "SCZ minus CN")])
    assert np.isfinite(got[("disease_sample_vs_site", "SCZ minus CN")])
    for m in maps.values():
        assert {len(v) for v in m.values()} == {228_483}

    table = pd.DataFrame({"synthetic_id": [0, 1, 2], "age": [55.0, 65.0, 75.0],
                          "sex": ["F", "M", "F"], "modality": "T1w",
                          "diagnosis": ["CN", "SCZ", "SCZ"]})
    sampling = SamplingConfig(steps=2, guidance=1.2, batch_size=2, seed=3)
    shard = synthesize_shard(tuned, table, tmp_path / "syn" / "shard-000", sampling, REG)
    syn_index = tmp_path / "syn" / "index.tsv"
    merge_indices([tmp_path / "syn" / "shard-000" / "index.tsv"], syn_index)
    syn = ImageStore(syn_index)
    std, pub = standard_layout(), public_layout()
    assert syn.n_voxels == std.n_voxels and len(shard) == 3

    audit = memorisation_audit(syn, ImageStore(index))
    assert len(audit) == 3 and audit["max_r"].abs().max() < 0.5  # noise vs noise
    gate = privacy_gate(audit)
    save_tsv(gate, tmp_path / "gate.tsv")
    files = export_cohort(syn_index, tmp_path / "gate.tsv", tmp_path / "export",
                          {"steps": 2}, tuned, registry=REG)

    # the same samples straight from the model, in its own (public) layout
    model, norms, config = load_for_sampling(tuned)
    model.voxel_layout = None  # unrecorded: the sampler converts nothing
    raw = sample_table(model, norms, config, table, sampling, REG)
    assert raw.shape == (3, 228_453)
    space_ = space.standard_space()
    for i, rel in enumerate(files["path"]):
        img = nib.load(tmp_path / "export" / rel)
        np.testing.assert_allclose(img.affine, space_.affine)
        assert img.shape == space.SHAPE
        vol = np.asanyarray(img.dataobj)
        assert not vol[~std.mask].any()  # nothing outside the brain mask
        assert not vol[std.mask & ~pub.mask].any()  # the slice the public layout lacks
        np.testing.assert_allclose(vol, pub.to_volume(raw[i]), atol=1e-6)
