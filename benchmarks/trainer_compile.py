"""The trainer end to end on a GPU, eager against compiled DiT blocks (issue 33), in one process.

Runs ``genbrain.training.loop.train`` twice on the same brain-sized store (228,483 voxels, 893
tokens), ``compile: false`` (the baseline) and ``compile: true``, each for ``--warm`` steps and then
``--steps`` more steps resumed from that checkpoint, so that start-up, the first-shape compile and
the first checkpoint are left out of the timed part. Prints seconds per step, images/s, MFU against
the bf16 matmul peak measured in this process or ``--peak`` TFLOP/s (training = 3 x the analytic
forward FLOPs of :func:`genbrain.model.dit.forward_flops`, as ``train_step.py`` and
``sampling.py`` count them) and the compiled/eager ratio. Needs CUDA.

    python benchmarks/trainer_compile.py --preset L/256 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mfu import header

from genbrain.model.dit import PRESETS, TRAIN_FLOPS_FACTOR, forward_flops
from genbrain.training.config import TrainConfig
from genbrain.training.loop import train
from tests.unit.training.test_loop import make_store

V_BRAIN = 228_483


def run(store: Path, out: Path, preset: str, batch: int, warm: int, steps: int,
        compile_: bool) -> float:
    base = {"preset": preset, "n_modalities": 2, "global_batch": batch, "lr": 1e-4,
                "checkpoint_every": 10_000, "log_every": 10_000, "sampling_weights": "model",
                "compile": compile_}
    train(TrainConfig(steps=warm, **base), store, out)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    train(TrainConfig(steps=warm + steps, **base), store, out)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="L/256")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--peak", type=float, default=None,
                    help="bf16 peak TFLOP/s for MFU (default: measured here, 8192^3 matmuls)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("trainer_compile: needs CUDA")
    line, peak = header(torch.device("cuda"), args.peak)
    print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "s", n=2 * args.batch, v=V_BRAIN)
        fl = TRAIN_FLOPS_FACTOR * sum(forward_flops(V_BRAIN, **PRESETS[args.preset]).values())
        res = {}
        for name, flag in (("eager", False), ("compiled", True)):
            s = run(store, Path(tmp) / name, args.preset, args.batch, args.warm, args.steps, flag)
            res[name] = s
            ips = args.batch / s
            print(f"{args.preset} batch {args.batch} {name}: {s:.4f} s/step, {ips:.1f} img/s, "
                  f"MFU {100 * ips * fl / (peak * 1e12):.1f}% (resumed steps incl. loading,"
                  " checkpoint write at the end)", flush=True)
        print(f"compiled / eager step time: {res['compiled'] / res['eager']:.3f} "
              f"(speed-up {res['eager'] / res['compiled']:.2f}x)")


if __name__ == "__main__":
    main()
