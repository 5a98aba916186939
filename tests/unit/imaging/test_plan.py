"""The image-level stage (genbrain.imaging.plan): the planner and the config mistakes it
refuses naming the key, the choice of test and training images, the pairs step (seeded per
image: the same image is corrupted alike whatever else is drawn and in whatever order), the
baselines' predictions, the score tables against a hand computation, and the fidelity rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.fidelity import fidelity_table
from genbrain.imaging import plan as ip
from genbrain.imaging.baselines import nlmeans_vectors
from genbrain.io import read_tsv, save_tsv
from genbrain.space import standard_space, template_t1
from genbrain.splits import holdout_split
from genbrain.store import write_shard

SEED = 5
NO_MOTION = {"n_movements": [0, 0], "sigmas": [10, 20], "noise_scale": 0.001}


def _table(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": [f"sub-P{i:03d}" for i in range(n)],
                         "site": "S1", "age": np.linspace(45, 80, n).round(1),
                         "sex": ["F", "M"] * (n // 2)})


def _config(task: dict | None = None, fraction: float = 0.25, **section) -> dict:
    spec = {"modality": "T1w", "n_test": 3, "n_train": 4, "corrupt": dict(NO_MOTION),
            "unet": {"steps": 2}}
    spec.update(task or {})
    return {"seed": SEED, "pretrain": {"holdout_fraction": fraction},
            "imaging": {"n_boot": 50, "tasks": {"t1": spec}, **section}}


COHORTS = {"population": SimpleNamespace(table=_table(), modalities=["T1w", "VBM", "FLAIR"]),
           "scz": SimpleNamespace(table=_table(8), modalities=["T1w"])}


#: a synthesis task's keys over the enhancement defaults of :func:`_config`
SYN = {"kind": "synthesis", "source": "T1w", "modality": "FLAIR", "corrupt": None}


def _plan(task: dict | None = None, **kw) -> ip.ImagingTask:
    return ip.plan_imaging(_config(task, **kw), COHORTS, "population")["t1"]


def test_plan_of_a_valid_task_and_its_round_trip():
    job = _plan()
    assert (job.task, job.kind, job.cohort, job.modality) == ("t1", "enhancement",
                                                              "population", "T1w")
    # 20 participants, hold-out 0.25: 5 hold-out, 15 training; the caps apply
    assert (job.n_test, job.n_train) == (3, 4)
    assert job.methods == ip.KIND_METHODS["enhancement"] and job.out_dir == "results/imaging/t1"
    assert job.corrupt["seed"] == SEED and job.unet["seed"] == SEED
    assert job.corruption().sigmas == (10.0, 20.0) and job.unet_settings().steps == 2
    assert ip.ImagingTask.from_dict(job.to_dict()) == job
    # caps above what there is give what there is; no training images without a trained method
    big = _plan({"n_test": 50, "n_train": None})
    assert (big.n_test, big.n_train) == (5, 15)
    assert _plan({"methods": ["nlmeans"]}).n_train == 0


@pytest.mark.parametrize("change, message", [
    ({"kind": "synthesys"}, "'imaging.tasks.t1.kind' is 'synthesys'"),
    ({"cohort": "nosuch"}, "'imaging.tasks.t1.cohort' is 'nosuch'"),
    ({"cohort": "scz"}, ("'imaging.tasks.t1.cohort' is 'scz'; the test images are the "
                        "pretraining cohort's hold-out")),
    ({"modality": "FA"}, "'imaging.tasks.t1.modality' is 'FA'"),
    ({"methods": ["unett"]}, "'imaging.tasks.t1.methods' is 'unett' (did you mean 'unet'?)"),
    ({"methods": ["mean", "mean"]}, "'imaging.tasks.t1.methods' lists a method twice"),
    ({"metrics": ["ssim"]}, "'imaging.tasks.t1.metrics' is 'ssim'"),
    ({"n_test": 1}, "'imaging.tasks.t1.n_test': 1 test image(s)"),
    ({"n_train": 0}, "'imaging.tasks.t1.n_train' is 0"),
    ({"n_examples": 4}, "'imaging.tasks.t1.n_examples' is 4; expected 1..3"),
    ({"corrupt": {"max_rotation": 45}}, "'imaging.tasks.t1.corrupt.max_rotation'"),
    ({"corrupt": {"seed": 3}}, "'imaging.tasks.t1.corrupt.seed'"),
    ({"corrupt": {"noise_scal": 1.0}}, ("unknown key 'noise_scal' under "
                                       "'imaging.tasks.t1.corrupt' (did you mean 'noise_scale'?)")),
    ({"unet": {"strides": [2, 2, 2]}}, "'imaging.tasks.t1.unet.strides'"),
    ({"unet": {"step": 3}}, "'imaging.tasks.t1.unet.step' is 'step' (did you mean 'steps'?)"),
    # synthesis (T1w -> FLAIR): its source, its methods, its DiT settings
    ({**SYN, "source": None}, ("'imaging.tasks.t1.source': a synthesis task needs the source "
                               "modality it maps to 'FLAIR'")),
    ({**SYN, "source": "T1"}, "'imaging.tasks.t1.source' is 'T1' (did you mean 'T1w'?)"),
    ({**SYN, "source": "FLAIR"}, ("'imaging.tasks.t1.source' is 'FLAIR', the task's target "
                                  "modality too")),
    ({**SYN, "methods": ["mean", "nlmeans"]}, ("'imaging.tasks.t1.methods' has 'nlmeans' on a "
                                               "task of kind 'synthesis': non-local means")),
    ({**SYN, "corrupt": {"noise_scale": 1.0}}, ("'imaging.tasks.t1.corrupt': a synthesis task "
                                                "corrupts nothing")),
    ({**SYN, "k": 0}, "'imaging.tasks.t1.k' is 0"),
    ({**SYN, "train": {"step": 3}}, ("'imaging.tasks.t1.train.step' is 'step' (did you mean "
                                     "'steps'?)")),
    ({**SYN, "train": {"seed": 3}}, "'imaging.tasks.t1.train.seed': the top-level 'seed'"),
    ({**SYN, "train": {"label_tokens": True}}, ("'imaging.tasks.t1.train.label_tokens': the "
                                                "task has no label head")),
    ({"source": "VBM"}, "'imaging.tasks.t1.source' is 'VBM' on a task of kind 'enhancement'"),
    ({"methods": ["mean", "genbrain"]}, ("'imaging.tasks.t1.methods' has 'genbrain' on a task "
                                         "of kind 'enhancement': the GenBrain method")),
    # several sources (rest -> task): each checked, the target not among them, none twice
    ({**SYN, "source": ["T1w", "VBMM"]}, ("'imaging.tasks.t1.source' is 'VBMM' (did you mean "
                                          "'VBM'?)")),
    ({**SYN, "source": ["T1w", "FLAIR"]}, ("'imaging.tasks.t1.source' is 'FLAIR', the task's "
                                           "target modality too")),
    ({**SYN, "source": ["T1w", "VBM", "T1w"]}, ("'imaging.tasks.t1.source' lists 'T1w' twice: "
                                                "['T1w', 'VBM', 'T1w']")),
    ({**SYN, "source": []}, "'imaging.tasks.t1.source': a synthesis task needs the source"),
    ({**SYN, "source": ["T1w", 3]}, ("'imaging.tasks.t1.source' is ['T1w', 3]; expected a "
                                    "modality name or a list")),
    ({"source": ["T1w", "VBM"]}, ("'imaging.tasks.t1.source' is ['T1w', 'VBM'] on a task of kind "
                                  "'enhancement'")),
    # the DeepTaskGen metrics are scored metrics too; a name twice is refused
    ({"metrics": ["dice_auk"]}, ("'imaging.tasks.t1.metrics' is 'dice_auk' (did you mean "
                                "'dice_auc'?)")),
    ({"metrics": ["psnr", "r", "psnr"]}, "'imaging.tasks.t1.metrics' lists a metric twice"),
])
def test_each_bad_key_is_refused_with_one_line_naming_it(change, message):
    with pytest.raises(GenbrainInputError) as err:
        _plan(change)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_plan_of_a_synthesis_task():
    job = _plan({**SYN, "k": 2, "demographics": False, "train": {"steps": 7}})
    assert (job.kind, job.sources, job.modality, job.k, job.demographics) == (
        "synthesis", ("T1w",), "FLAIR", 2, False)
    # its default methods: no non-local means; the DiT fine-tuned and from scratch
    assert job.methods == ("mean", "unet", "genbrain", "scratch")
    assert job.dit_methods == ("genbrain", "scratch") and job.n_train == 4
    assert dict(job.train) == {"steps": 7}
    assert ip.ImagingTask.from_dict(job.to_dict()) == job
    # the paper's k and demographics by default; a DiT method alone trains
    only = _plan({**SYN, "methods": ["scratch"]})
    assert (only.k, only.demographics, only.n_train) == (5, True, 4)


def test_a_task_of_several_sources_keeps_their_order_and_a_single_name_stays_one():
    job = _plan({**SYN, "source": ["VBM", "T1w"], "metrics": ["r", "identified", "dice_auc",
                                                              "psnr"]})
    assert job.sources == ("VBM", "T1w") and job.source_label == "VBM + T1w"
    assert job.metrics == ("r", "identified", "dice_auc", "psnr")
    # r and identified come from the identifiability matrices: scored once, not twice
    assert job.pixel_metrics == ("dice_auc", "psnr")
    assert _plan({**SYN, "metrics": ["r", "dice_auc"], "identifiability": False}
                 ).pixel_metrics == ("r", "dice_auc")
    assert ip.ImagingTask.from_dict(job.to_dict()) == job
    assert _plan(SYN).sources == ("T1w",) and _plan().sources == ()
    # the fine-tuning jobs of its DiT methods take every source, in that order
    from genbrain.workflow import imaging_finetunes

    cohorts = {"population": SimpleNamespace(**vars(COHORTS["population"]), sites=["S1"])}
    jobs = imaging_finetunes({"t1": job}, cohorts)
    assert {k: v.sources for k, v in jobs.items()} == {"t1/genbrain": ("VBM", "T1w"),
                                                      "t1/scratch": ("VBM", "T1w")}
    assert jobs["t1/genbrain"].modalities == ("FLAIR",)


@pytest.mark.parametrize("name", ["config", "demo"])
def test_the_shipped_configs_plan_their_rest_to_task_tasks(name):
    """config/config.yaml (rest -> shapes / faces from the 15 FC maps, diffusion -> FC from
    the 9 DTI/NODDI maps) and config/demo.yaml (fc01-fc03 -> task_faces) pass the schema and
    the planner, the sources in their order; a fake pretraining cohort of 400 stands for the
    cohort's table."""
    from genbrain.config import load_yaml, validate_config
    from tests.workflow.helpers import ROOT

    cfg = validate_config(load_yaml(ROOT / "config" / f"{name}.yaml"),
                          ROOT / "workflow" / "schemas" / "config.schema.yaml")
    pre = next(k for k, c in cfg["cohorts"].items() if c.get("role") == "pretrain")
    cohorts = {pre: SimpleNamespace(table=_table(400),
                                    modalities=cfg["cohorts"][pre]["modalities"])}
    plan = ip.plan_imaging(cfg, cohorts, pre)
    fc = tuple(f"fc{i:02d}" for i in range(1, 16))
    want = ({"rest2shapes": (fc, "task_shapes"), "rest2faces": (fc, "task_faces"),
             "dwi2fc09": (("FA", "MD", "MO", "L1", "L2", "L3", "OD", "ICVF", "ISOVF"), "fc09"),
             "dwi2fc13": (("FA", "MD", "MO", "L1", "L2", "L3", "OD", "ICVF", "ISOVF"), "fc13"),
             "t1flair": (("T1w",), "FLAIR")}
            if name == "config" else
            {"rest2task": (("fc01", "fc02", "fc03"), "task_faces"), "t1flair": (("T1w",), "FLAIR")})
    for task, (sources, target) in want.items():
        assert (plan[task].sources, plan[task].modality) == (sources, target), task
        if task.startswith("rest2"):
            assert {"r", "identified", "dice_auc"} <= set(plan[task].metrics)
    if name == "demo":
        job = plan["rest2task"]
        assert job.methods == ("mean", "genbrain")
        assert (job.n_test, job.n_train, job.k) == (8, 64, 2)
        assert job.train["steps"] == 120 and job.train["global_batch"] == 8


def test_the_scores_step_asks_memory_for_its_test_images():
    small, paper = _plan({"n_test": 3}), _plan({"n_test": None}, fraction=0.25)
    assert small.scores_mem_mb() == pytest.approx(1064, abs=5)  # 3 images: ~the overhead
    # the paper's 500 test images, 4 methods: the float64 correlation inputs alone are
    # 4 x 500 x 228,483 x 8 bytes = 3.66 GB; with the arrays held, ~8 GB
    big = ip.ImagingTask(**{**small.to_dict(), "n_test": 500,
                            "methods": ("mean", "unet", "genbrain", "scratch")})
    assert 7500 < big.scores_mem_mb() < 9000
    assert big.scores_mem_mb() > 4 * 500 * ip.N_VOXELS * 8 / 2**20
    more = ip.ImagingTask(**{**big.to_dict(), "n_test": 1000})
    assert more.scores_mem_mb() - 1024 == pytest.approx(2 * (big.scores_mem_mb() - 1024), abs=2)
    assert paper.scores_mem_mb() >= small.scores_mem_mb()


def test_a_task_without_a_pretraining_cohort_is_refused():
    with pytest.raises(GenbrainInputError, match="'imaging.tasks.t1': no cohort has role "
                                                 "'pretrain'"):
        ip.plan_imaging(_config(), COHORTS, None)


def test_a_hold_out_too_small_to_test_is_refused():
    cohorts = {"population": SimpleNamespace(table=_table(4), modalities=["T1w"])}
    with pytest.raises(GenbrainInputError, match="'imaging.tasks.t1.n_test': 1 test image"):
        ip.plan_imaging(_config(), cohorts, "population")


def test_selection_ignores_order_and_others_and_is_nested():
    ids = [f"sub-{i}" for i in range(30)]
    four = ip.select_participants(ids, 4, SEED, "t1")
    assert four == sorted(four) and len(four) == 4
    assert ip.select_participants(ids[::-1], 4, SEED, "t1") == four
    assert set(four) <= set(ip.select_participants(ids, 9, SEED, "t1"))
    # an id that is not chosen can be dropped without changing the choice
    others = [i for i in ids if i not in four][:5]
    assert ip.select_participants([i for i in ids if i not in others], 4, SEED, "t1") == four
    assert ip.select_participants(ids, 4, SEED, "t2") != four  # each task its own draw


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A one-shard T1w store of 20 participants (z-scored template plus subject noise) and the
    pretraining split of them."""
    root = tmp_path_factory.mktemp("store")
    space = standard_space()
    base = space.to_vector(template_t1()).astype(np.float64)
    rng = np.random.default_rng(0)
    x = base + 0.05 * base.std() * rng.standard_normal((20, len(base)))
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    write_shard(x, root / "T1w.npy", dtype="float32")
    table = _table()
    index = table.assign(modality="T1w", modality_index=27, shard="T1w.npy", row=range(20))
    save_tsv(index, root / "index.tsv")
    split = holdout_split(table, 0.25, SEED)
    save_tsv(split, root / "split.tsv")
    return root, split


def _pairs(job, index, split, out_dir):
    out = {k: str(out_dir / f"{k}.npy") for k in ("test_source", "test_target",
                                                   "train_source", "train_target")}
    out.update(images=str(out_dir / "images.tsv"), corruption=str(out_dir / "corruption.tsv"))
    images = ip.make_pairs(job, index, split, out)
    return out, images


def test_pairs_are_seeded_per_image_whatever_else_is_drawn(store, tmp_path):
    root, split = store
    job = _plan({"n_test": 2, "n_train": 3})
    out, images = _pairs(job, root / "index.tsv", root / "split.tsv", tmp_path / "a")
    assert list(images["set"]) == ["test"] * 2 + ["train"] * 3
    held = set(split.loc[split["split"] == "holdout", "participant_id"])
    assert set(images.loc[images["set"] == "test", "participant_id"]) <= held
    tgt, src = np.load(out["test_target"]), np.load(out["test_source"])
    assert tgt.shape == src.shape == (2, standard_space().n_voxels)
    assert tgt.min() == 0.0 and tgt.max() == 1.0  # each clean image on its [0, 1] range
    assert not np.allclose(src, tgt)
    # more test images, the split table's rows shuffled: the two first images are corrupted
    # exactly as before (each from its own stream), and their draws are the same
    save_tsv(split.sample(frac=1.0, random_state=1), tmp_path / "shuffled.tsv")
    more = _plan({"n_test": 4, "n_train": 3})
    out2, images2 = _pairs(more, root / "index.tsv", tmp_path / "shuffled.tsv", tmp_path / "b")
    ids, ids2 = list(images["participant_id"][:2]), list(images2["participant_id"][:4])
    assert set(ids) <= set(ids2)
    rows2 = [ids2.index(i) for i in ids]
    np.testing.assert_array_equal(np.load(out2["test_source"])[rows2], src)
    np.testing.assert_array_equal(np.load(out2["train_source"]), np.load(out["train_source"]))
    d1 = read_tsv(out["corruption"]).set_index("image_id")
    d2 = read_tsv(out2["corruption"]).set_index("image_id")
    pd.testing.assert_frame_equal(d1, d2.loc[d1.index])
    assert set(d1.columns) >= {"set", "rotations_deg", "translations_mm", "sigma_gaussian",
                               "sigma_rician"}


def test_pairs_without_a_trained_method_keep_an_empty_training_set(store, tmp_path):
    root, _ = store
    job = _plan({"methods": ["nlmeans"], "n_test": 2})
    out, images = _pairs(job, root / "index.tsv", root / "split.tsv", tmp_path)
    assert np.load(out["train_source"]).shape == (0, standard_space().n_voxels)
    assert set(images["set"]) == {"test"}
    # the test sources are read memory-mapped, to the same result as from memory
    np.testing.assert_array_equal(ip.predict(job, "nlmeans", out),
                                  nlmeans_vectors(np.load(out["test_source"])))


@pytest.fixture(scope="module")
def store3(tmp_path_factory, store):
    """The T1w store plus VBM and FLAIR images of the same 20 participants (the T1w store's
    split): a target and two sources."""
    root, split = store
    out = tmp_path_factory.mktemp("store3")
    rng = np.random.default_rng(1)
    index = read_tsv(root / "index.tsv")
    frames = [index]
    for j, m in enumerate(("VBM", "FLAIR"), start=1):
        write_shard(rng.uniform(size=(20, standard_space().n_voxels)), out / f"{m}.npy",
                    dtype="float32")
        frames.append(index.assign(modality=m, modality_index=j, shard=f"{m}.npy"))
    (out / "T1w.npy").symlink_to(root / "T1w.npy")
    save_tsv(split, out / "split.tsv")
    save_tsv(pd.concat(frames, ignore_index=True), out / "index.tsv")
    return out, split


def test_pairs_of_several_sources_carry_every_channel_in_order(store3, tmp_path):
    root, _split = store3
    job = _plan({**SYN, "source": ["VBM", "T1w"], "n_test": 2, "n_train": 3,
                 "methods": ["mean", "unet"]})
    out, images = _pairs(job, root / "index.tsv", root / "split.tsv", tmp_path)
    v = standard_space().n_voxels
    test_src, train_src = np.load(out["test_source"]), np.load(out["train_source"])
    assert test_src.shape == (2, 2, v) and train_src.shape == (3, 2, v)
    assert np.load(out["test_target"]).shape == (2, v)
    # channel j is the j-th source of the same participant, on [0, 1] as the target
    for which, src in (("test", test_src), ("train", train_src)):
        ids = list(images.loc[images["set"] == which, "participant_id"])
        for j, m in enumerate(job.sources):
            np.testing.assert_array_equal(src[:, j], ip.load_clean(root / "index.tsv", m, ids))
    assert read_tsv(out["corruption"]).empty  # nothing corrupted
    # the input scored is the mean of the sources' [0, 1] images
    np.testing.assert_allclose(ip.input_image(test_src), test_src.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(ip.input_image(test_src[:, 0]), test_src[:, 0])
    # the baselines take the channels: the U-Net's input has two, the mean image none
    assert ip.predict(job, "mean", out).shape == (2, v)
    assert ip.predict(job, "unet", out).shape == (2, v)
    # an empty training set is (0, K, V) (every synthesis method trains, so only by hand)
    none = _plan({**SYN, "source": ["VBM", "T1w"], "n_test": 2, "methods": ["unet"]})
    none = ip.ImagingTask(**{**none.to_dict(), "n_train": 0, "methods": ("mean",)})
    out0, _ = _pairs(none, root / "index.tsv", root / "split.tsv", tmp_path / "none")
    assert np.load(out0["train_source"]).shape == (0, 2, v)


def test_scores_of_several_sources_score_their_mean_as_the_input():
    job = _plan({**SYN, "source": ["VBM", "T1w"], "n_test": 4,
                 "metrics": ["r", "identified", "dice_auc", "psnr"], "methods": ["mean"]})
    rng = np.random.default_rng(3)
    target = rng.uniform(size=(4, 80))
    source = rng.uniform(size=(4, 2, 80))
    mean = np.broadcast_to(target.mean(0), target.shape)
    res = ip.score_task(job, source, target, {"mean": mean}, list("abcd"))
    sc = res["scores"]
    # every metric once per (method, image): r and identified from the matrices only
    assert sorted(sc.groupby(["method", "metric"]).size().unique()) == [4]
    assert set(sc["metric"]) == {"r", "identified", "r_gap", "dice_auc", "psnr"}
    want = ip.score_task(job, source.mean(axis=1), target, {"mean": mean}, list("abcd"))
    pd.testing.assert_frame_equal(sc, want["scores"])
    from genbrain.imaging.metrics import dice_auc

    got = sc[(sc["method"] == "input") & (sc["metric"] == "dice_auc")]["value"].to_numpy()
    np.testing.assert_allclose(got, dice_auc(source.mean(axis=1), target))


def test_mean_baseline_predicts_the_mean_training_target(store, tmp_path):
    root, _ = store
    job = _plan({"n_test": 2, "n_train": 3})
    out, _ = _pairs(job, root / "index.tsv", root / "split.tsv", tmp_path)
    pred = ip.predict(job, "mean", out)
    want = np.load(out["train_target"]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(pred, np.broadcast_to(want, pred.shape), atol=1e-6)
    with pytest.raises(GenbrainInputError, match="method 'unet' is not among"):
        ip.predict(_plan({"methods": ["mean"]}), "unet", out)


def test_scores_and_summary_against_a_hand_computation():
    job = ip.ImagingTask(task="t", kind="enhancement", cohort="c", modality="T1w", n_test=3,
                         n_train=0, methods=("m",), corrupt={}, unet={},
                         metrics=("psnr", "rmse"), n_examples=1, n_boot=200, seed=1,
                         identifiability=False)
    target = np.array([[0.0, 0.5, 1.0, 0.25], [0.0, 1.0, 0.5, 0.75], [1.0, 0.0, 0.5, 0.5]])
    source = target + np.array([[0.0, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.1],
                                [0.0, 0.1, 0.0, 0.1]])
    pred = target + np.array([[0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.05],
                              [0.0, 0.0, 0.0, 0.1]])
    res = ip.score_task(job, source, target, {"m": pred}, ["a", "b", "c"])
    scores, summary = res["scores"], res["summary"]
    assert len(scores) == 2 * 2 * 3  # (input, m) x (psnr, rmse) x 3 images

    def hand_rmse(p, t):
        # every image is min-max normalised over its voxels before scoring; these sources and
        # predictions keep each target's min 0 and max 1 except where noted, so by hand:
        pn = (p - p.min()) / (p.max() - p.min())
        return np.sqrt(np.mean((pn - t) ** 2))

    r_in = np.array([hand_rmse(source[i], target[i]) for i in range(3)])
    r_m = np.array([hand_rmse(pred[i], target[i]) for i in range(3)])
    got = scores[scores["metric"] == "rmse"].set_index(["method", "subject"])["value"]
    np.testing.assert_allclose(got.loc["input"].to_numpy(), r_in)
    np.testing.assert_allclose(got.loc["m"].to_numpy(), r_m)
    psnr = scores[(scores["metric"] == "psnr") & (scores["method"] == "m")]["value"]
    np.testing.assert_allclose(psnr.to_numpy(), -20 * np.log10(r_m))
    s = summary.set_index(["method", "metric"])
    assert s.loc[("m", "rmse"), "mean"] == pytest.approx(r_m.mean())
    assert s.loc[("m", "rmse"), "mean_difference"] == pytest.approx((r_m - r_in).mean())
    t = sstats.ttest_rel(-20 * np.log10(r_m), -20 * np.log10(r_in))
    assert s.loc[("m", "psnr"), "t"] == pytest.approx(t.statistic)
    assert s.loc[("m", "psnr"), "p"] == pytest.approx(t.pvalue)
    for (method, metric), row in s.iterrows():
        assert row["ci_low"] <= row["mean"] <= row["ci_high"], (method, metric)
    assert s.loc[("m", "rmse"), "difference_ci_low"] <= (r_m - r_in).mean() \
        <= s.loc[("m", "rmse"), "difference_ci_high"]
    assert np.isnan(s.loc[("input", "psnr"), "p"]) and (summary["baseline"] == "input").all()


def test_fidelity_rows_are_each_baselines_gain_over_the_input(tmp_path):
    summary = pd.DataFrame([
        {"task": "t1", "method": "input", "metric": "psnr", "n": 8, "mean": 20.0,
         "ci_low": 19.0, "ci_high": 21.0, "mean_difference": 0.0, "difference_ci_low": np.nan,
         "difference_ci_high": np.nan, "p": np.nan},
        {"task": "t1", "method": "unet", "metric": "psnr", "n": 8, "mean": 22.0,
         "ci_low": 21.0, "ci_high": 23.0, "mean_difference": 2.0, "difference_ci_low": 1.0,
         "difference_ci_high": 3.0, "p": 0.01},
        {"task": "t1", "method": "mean", "metric": "psnr", "n": 8, "mean": 15.0,
         "ci_low": 14.0, "ci_high": 16.0, "mean_difference": -5.0, "difference_ci_low": -6.0,
         "difference_ci_high": -4.0, "p": 0.001}])
    (tmp_path / "imaging" / "t1").mkdir(parents=True)
    save_tsv(summary, tmp_path / "imaging" / "t1" / "summary.tsv")
    table = fidelity_table(tmp_path)
    rows = table[table["claim_id"] == "imaging.baseline_gain.psnr"].set_index("subject")
    assert rows.loc["t1 unet (baseline)", "verdict"] == "met"
    assert rows.loc["t1 mean (baseline)", "verdict"] == "not met"
    assert rows.loc["t1 unet (baseline)", "measured"] == 2.0
    ssim = table[table["claim_id"] == "imaging.baseline_gain.ssim3d"]
    assert list(ssim["verdict"]) == ["not measured"]  # no ssim3d rows in this summary


def test_genbrain_is_compared_with_every_other_method_paired_over_images():
    job = _plan({**SYN, "n_test": 4, "metrics": ["psnr"]})
    rng = np.random.default_rng(0)
    target = rng.uniform(size=(4, 50))
    source = rng.uniform(size=(4, 50))
    preds = {m: target + s * rng.standard_normal((4, 50))
             for m, s in (("mean", 0.4), ("unet", 0.2), ("genbrain", 0.05), ("scratch", 0.1))}
    res = ip.score_task(job, source, target, preds, ["a", "b", "c", "d"])
    s = res["summary"]
    assert set(s["kind"]) == {"synthesis"}
    # every method against the input; genbrain against each other method too
    assert sorted(s.loc[(s["method"] == "genbrain") & (s["metric"] == "psnr"),
                        "baseline"]) == ["input", "mean", "scratch", "unet"]
    assert set(s.loc[s["method"] != "genbrain", "baseline"]) == {"input"}
    sc = res["scores"][res["scores"]["metric"] == "psnr"].pivot_table(
        index="subject", columns="method", values="value")
    row = s[(s["method"] == "genbrain") & (s["baseline"] == "scratch")
            & (s["metric"] == "psnr")].iloc[0]
    d = (sc["genbrain"] - sc["scratch"]).to_numpy()
    assert row["mean_difference"] == pytest.approx(d.mean())
    assert row["p"] == pytest.approx(sstats.ttest_rel(sc["genbrain"], sc["scratch"]).pvalue)
    assert row["difference_ci_low"] <= d.mean() <= row["difference_ci_high"]


def _synthesis_summary(diff_scratch: float) -> pd.DataFrame:
    rows = []
    for method, base, mean, d in (("input", "input", 10.0, 0.0), ("mean", "input", 15.0, 5.0),
                                  ("scratch", "input", 18.0, 8.0),
                                  ("genbrain", "input", 18.0 + diff_scratch, 8.0),
                                  ("genbrain", "mean", 18.0 + diff_scratch, 3.0 + diff_scratch),
                                  ("genbrain", "scratch", 18.0 + diff_scratch, diff_scratch)):
        rows.append({"task": "t1flair", "kind": "synthesis", "method": method, "metric": "psnr",
                     "n": 8, "mean": mean, "ci_low": mean - 1, "ci_high": mean + 1,
                     "baseline": base, "mean_difference": d, "difference_ci_low": d - 0.5,
                     "difference_ci_high": d + 0.5, "t": 1.0, "p": 0.01})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diff, verdict", [(1.0, "met"), (-1.0, "not met")])
def test_fidelity_rows_of_synthesis_are_genbrain_against_scratch_and_mean(tmp_path, diff,
                                                                          verdict):
    (tmp_path / "imaging" / "t1flair").mkdir(parents=True)
    save_tsv(_synthesis_summary(diff), tmp_path / "imaging" / "t1flair" / "summary.tsv")
    table = fidelity_table(tmp_path).set_index("claim_id")
    row = table.loc["imaging.genbrain_vs_scratch.psnr"]
    assert (row["subject"], row["measured"], row["verdict"]) == (
        "t1flair genbrain vs scratch", diff, verdict)
    assert (row["ci_low"], row["ci_high"]) == (diff - 0.5, diff + 0.5)
    assert "21.50 dB" in row["paper"]
    assert table.loc["imaging.genbrain_vs_mean.psnr", "measured"] == 3.0 + diff
    # no ssim3d rows: not measured, naming why; a synthesis task is no enhancement baseline
    assert table.loc["imaging.genbrain_vs_scratch.ssim3d", "verdict"] == "not measured"
    assert table.loc["imaging.baseline_gain.psnr", "verdict"] == "not measured"


def test_fidelity_rows_of_rest_to_task_are_its_map_metrics_against_the_mean(tmp_path):
    """rest -> task without a from-scratch control: its r and Dice AUC against the mean image
    are measured with the paper's r; the comparisons it does not run give it no row, beside
    the T1w -> FLAIR task's rows."""
    (tmp_path / "imaging" / "t1flair").mkdir(parents=True)
    save_tsv(_synthesis_summary(1.0), tmp_path / "imaging" / "t1flair" / "summary.tsv")
    rows = []
    for metric, (gb, mean) in {"r": (0.60, 0.55), "dice_auc": (0.30, 0.31),
                               "psnr": (20.0, 18.0)}.items():
        for method, base, value, d in (("input", "input", 0.3, 0.0),
                                       ("mean", "input", mean, mean - 0.3),
                                       ("genbrain", "input", gb, gb - 0.3),
                                       ("genbrain", "mean", gb, gb - mean)):
            rows.append({"task": "rest2task", "kind": "synthesis", "method": method,
                         "metric": metric, "n": 8, "mean": value, "ci_low": value - 0.01,
                         "ci_high": value + 0.01, "baseline": base, "mean_difference": d,
                         "difference_ci_low": d - 0.02, "difference_ci_high": d + 0.02,
                         "t": 1.0, "p": 0.01})
    (tmp_path / "imaging" / "rest2task").mkdir()
    save_tsv(pd.DataFrame(rows), tmp_path / "imaging" / "rest2task" / "summary.tsv")
    table = fidelity_table(tmp_path)
    r = table[table["claim_id"] == "imaging.genbrain_vs_mean.r"].set_index("subject")
    row = r.loc["rest2task genbrain vs mean"]
    assert row["measured"] == pytest.approx(0.05) and row["verdict"] == "met"
    assert "r 0.54" in row["paper"] and "genbrain 0.600" in row["note"]
    dice = table[table["claim_id"] == "imaging.genbrain_vs_mean.dice_auc"]
    assert list(dice["subject"]) == ["rest2task genbrain vs mean"]
    assert list(dice["verdict"]) == ["not met"]  # -0.01, its CI through 0
    # rest2task has no scratch: the from-scratch rows are t1flair's alone, all measured
    scratch = table[table["claim_id"].str.startswith("imaging.genbrain_vs_scratch.")]
    assert set(scratch.loc[scratch["verdict"] != "not measured", "subject"]) == {
        "t1flair genbrain vs scratch"}
    psnr = table[table["claim_id"] == "imaging.genbrain_vs_mean.psnr"]
    assert sorted(psnr["subject"]) == ["rest2task genbrain vs mean", "t1flair genbrain vs mean"]
    # a comparison no task makes: one row, not measured, saying why
    none = table[table["claim_id"] == "imaging.genbrain_vs_scratch.ssim3d"]
    assert list(none["verdict"]) == ["not measured"]
    assert "no synthesis task scores 'ssim3d' of genbrain and scratch" in none["note"].item()


@pytest.mark.parametrize("value", [2, "20", 2.5, True])
def test_a_bad_biology_min_n_is_refused_naming_the_key(value):
    with pytest.raises(GenbrainInputError) as err:
        _plan({**SYN, "biology_min_n": value})
    assert "'imaging.tasks.t1.biology_min_n' is" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(GenbrainInputError, match="'imaging.tasks.t1.identifiability' is 'yes'"):
        _plan({**SYN, "identifiability": "yes"})
    job = _plan({**SYN, "biology_min_n": 3, "identifiability": False})
    assert (job.biology_min_n, job.identifiability) == (3, False)
    assert ip.ImagingTask.from_dict(job.to_dict()) == job
    assert (_plan(SYN).biology_min_n, _plan(SYN).identifiability) == (20, True)


def test_identifiability_rows_and_matrices_in_the_scores():
    job = _plan({**SYN, "n_test": 5, "metrics": ["psnr"]})
    rng = np.random.default_rng(1)
    target = rng.uniform(size=(5, 60))
    preds = {"mean": np.repeat(target.mean(axis=0, keepdims=True), 5, axis=0),
             "unet": target + 0.3 * rng.standard_normal((5, 60)),
             "genbrain": target + 0.05 * rng.standard_normal((5, 60)),
             "scratch": target[::-1].copy()}
    source = rng.uniform(size=(5, 60))
    res = ip.score_task(job, source, target, preds, list("abcde"))
    assert res["runs"] == ["input", "mean", "unet", "genbrain", "scratch"]
    c = res["correlations"]
    assert c.shape == (5, 5, 5)
    want = np.corrcoef(target, preds["genbrain"])[:5, 5:]
    np.testing.assert_allclose(c[3], want, atol=1e-6)
    s = res["summary"][res["summary"]["baseline"] == "input"].set_index(["method", "metric"])
    assert s.loc[("genbrain", "identified"), "mean"] == 1.0
    assert s.loc[("mean", "identified"), "mean"] == 0.0  # one image for all: ties
    # the reversed targets identify only the middle image (it is its own reverse)
    assert s.loc[("scratch", "identified"), "mean"] == pytest.approx(0.2)
    off = want[~np.eye(5, dtype=bool)]
    assert s.loc[("genbrain", "r_gap"), "mean"] == pytest.approx(np.diag(want).mean()
                                                                 - off.mean(), abs=1e-6)
    gb = res["summary"][(res["summary"]["method"] == "genbrain")
                        & (res["summary"]["metric"] == "identified")]
    assert set(gb["baseline"]) == {"input", "mean", "unet", "scratch"}
    # off: no identifiability rows, no matrices
    off_job = _plan({**SYN, "n_test": 5, "metrics": ["psnr"], "identifiability": False})
    res = ip.score_task(off_job, source, target, preds, list("abcde"))
    assert set(res["scores"]["metric"]) == {"psnr"} and res["correlations"].shape == (0, 5, 5)


def _similarity_inputs(n, rng):
    age = np.linspace(45, 80, n)
    sex = ["F", "M"] * (n // 2)
    pattern = rng.standard_normal(40)
    target = rng.standard_normal((n, 40)) + np.outer((age - 60) / 10, pattern)
    reference = np.stack([pattern, rng.standard_normal(40)])
    return age, sex, target, reference


def test_similarity_is_not_computed_below_the_minimum_n():
    job = _plan({**SYN, "n_test": 5})
    rng = np.random.default_rng(2)
    age, sex, target, reference = _similarity_inputs(4, rng)
    t = ip.similarity_task(job, {"target": target, "genbrain": target}, age, sex, reference)
    assert len(t) == 4 and t["similarity"].isna().all()
    assert set(t["note"]) == {"not computed: n_test 4 < biology_min_n 20"}


def test_similarity_rows_against_the_real_targets_and_a_hand_cosine():
    from genbrain.stats.similarity import cosine_similarity, t_from_r

    job = _plan({**SYN, "n_test": 5, "biology_min_n": 10})
    rng = np.random.default_rng(3)
    age, sex, target, reference = _similarity_inputs(24, rng)
    runs = {"target": target, "input": rng.standard_normal((24, 40)),
            "genbrain": target + 0.5 * rng.standard_normal((24, 40)),
            "scratch": rng.standard_normal((24, 40))}
    t = ip.similarity_task(job, runs, age, sex, reference)
    assert (t["note"] == "").all()
    r = np.array([sstats.pearsonr(runs["genbrain"][:, j], age)[0] for j in range(40)])
    want = cosine_similarity(t_from_r(r, 24), reference[0])
    row = t[(t["method"] == "genbrain") & (t["effect"] == "age") & (t["baseline"] == "target")]
    assert row["similarity"].iloc[0] == pytest.approx(want, abs=1e-6)
    real = t[(t["method"] == "target") & (t["effect"] == "age")].iloc[0]
    assert row["difference"].iloc[0] == pytest.approx(want - real["similarity"], abs=1e-9)
    assert row["difference_ci_low"].iloc[0] <= row["difference"].iloc[0] \
        <= row["difference_ci_high"].iloc[0]
    # genbrain against every other run; the rest against the real targets only
    gb = t[(t["method"] == "genbrain") & (t["effect"] == "age")]
    assert sorted(gb["baseline"]) == ["input", "scratch", "target"]
    assert set(t.loc[t["method"] != "genbrain", "baseline"]) == {"target"}
    vs = gb.set_index("baseline")
    assert vs.loc["scratch", "difference"] > 0 and vs.loc["scratch", "p"] < 0.05


def test_fidelity_rows_of_identifiability_and_similarity(tmp_path):
    out = tmp_path / "imaging" / "t1flair"
    out.mkdir(parents=True)
    summary = _synthesis_summary(1.0)
    ident = summary.copy()
    ident["metric"] = "identified"
    # genbrain identifies more than scratch (CI 0.1..0.3) but not surely more than mean
    ident.loc[ident["baseline"] == "scratch", ["mean_difference", "difference_ci_low",
                                               "difference_ci_high"]] = [0.2, 0.1, 0.3]
    ident.loc[ident["baseline"] == "mean", ["mean_difference", "difference_ci_low",
                                            "difference_ci_high"]] = [0.2, -0.1, 0.5]
    save_tsv(pd.concat([summary, ident]), out / "summary.tsv")
    rows = []
    for method, base, sim, d, lo in (("target", "target", 0.97, 0.0, np.nan),
                                     ("scratch", "target", 0.80, -0.17, -0.25),
                                     ("genbrain", "target", 0.95, -0.02, -0.04),
                                     ("genbrain", "scratch", 0.95, 0.15, -0.01)):
        for effect in ("age", "sex"):
            rows.append({"task": "t1flair", "kind": "synthesis", "method": method,
                         "effect": effect, "n": 30, "similarity": sim, "ci_low": sim - 0.02,
                         "ci_high": sim + 0.02, "baseline": base, "difference": d,
                         "difference_ci_low": lo, "difference_ci_high": d + 0.05, "t": 2.0,
                         "p": 0.04, "note": ""})
    save_tsv(pd.DataFrame(rows), out / "similarity.tsv")
    table = fidelity_table(tmp_path).set_index("claim_id")
    assert table.loc["imaging.genbrain_vs_scratch.identified", "verdict"] == "met"
    assert table.loc["imaging.genbrain_vs_mean.identified", "verdict"] == "not met"
    assert table.loc["imaging.genbrain_vs_scratch.r_gap", "verdict"] == "not measured"
    real = table.loc["imaging.similarity_vs_real.age"]
    assert (real["measured"], real["ci_low"], real["verdict"]) == (-0.02, -0.04, "met")
    assert "0.96" in real["paper"] and "0.97" in real["paper"]
    assert table.loc["imaging.similarity_vs_scratch.sex", "verdict"] == "not met"  # CI < 0
    # too few test images: not measured, with the table's note
    t = pd.DataFrame(rows)
    t[["similarity", "difference", "difference_ci_low"]] = np.nan
    t["note"] = "not computed: n_test 8 < biology_min_n 20"
    save_tsv(t, out / "similarity.tsv")
    table = fidelity_table(tmp_path).set_index("claim_id")
    row = table.loc["imaging.similarity_vs_real.sex"]
    assert row["verdict"] == "not measured" and "n_test 8 < biology_min_n 20" in row["note"]
    # as similarity_task writes it then: every method against the targets only, no genbrain vs
    # scratch rows; the comparison with scratch says why too
    save_tsv(t[t["baseline"] == "target"], out / "similarity.tsv")
    table = fidelity_table(tmp_path).set_index("claim_id")
    row = table.loc["imaging.similarity_vs_scratch.age"]
    assert row["verdict"] == "not measured" and "n_test 8 < biology_min_n 20" in row["note"]


def test_scores_outputs_write_the_biology_tables_and_the_figure(store, tmp_path):
    root, _ = store
    job = _plan({"n_test": 5, "n_train": 3, "methods": ["mean"], "metrics": ["psnr"],
                 "biology_min_n": 5})
    out, _ = _pairs(job, root / "index.tsv", root / "split.tsv", tmp_path)
    from genbrain.io import save_npy

    save_npy(ip.predict(job, "mean", out), tmp_path / "mean.npy")
    files = {k: str(tmp_path / f) for k, f in (
        ("scores", "scores.tsv"), ("summary", "summary.tsv"), ("similarity", "similarity.tsv"),
        ("correlations", "correlations.npy"))}
    ip.scores_outputs(job, out, [str(tmp_path / "mean.npy")], files,
                      index=str(root / "index.tsv"), split=str(root / "split.tsv"))
    assert np.load(files["correlations"]).shape == (2, 5, 5)  # input, mean
    sim = read_tsv(files["similarity"])
    assert set(sim["method"]) == {"target", "input", "mean"}
    # the mean image is one image for all: its t-maps are zero, their direction undefined
    mean = sim[sim["method"] == "mean"]
    assert mean["similarity"].isna().all() and set(mean["note"]) == {
        "undefined: the t-map is zero"}
    real = sim[(sim["method"] == "target")]
    assert real["similarity"].notna().all() and (real["similarity"].abs() <= 1).all()
    figs = {k: str(tmp_path / f"{k}.png") for k in ("examples", "metrics", "identifiability")}
    ip.figure_outputs(job, out, [str(tmp_path / "mean.npy")], files["scores"],
                      files["summary"], figs, correlations=files["correlations"])
    from pathlib import Path

    assert Path(figs["identifiability"]).read_bytes()[:4] == b"\x89PNG"
