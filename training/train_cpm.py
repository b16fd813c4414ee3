"""Train a CPM (OpenPose-hand layout) on cached RGB hand crops with the shared training harness.

Examples::

    # the CPU default: cpm_light on 16k synthetic frames, 40 min of training on 2 cores
    python -m training.train_cpm --recipe cpm_light --out runs/cpm_light

    # the packaged weights: that run (right hands; 48,601 steps on an AVX-512-BF16 machine), exported
    python -m training.train_cpm --recipe cpm_light --export handpose_core/weights/cpm_light_synth.pt

    # a longer run: raise the step cap with the time budget (seconds), so that time ends it
    python -m training.train_cpm --recipe cpm_light --time-budget 5400 --steps 200000 --out runs/cpm90

    # the full OpenPose layout (a GPU job); one CPU step to check it trains
    python -m training.train_cpm --recipe cpm_openpose --steps 1 --frames 16 --eval-frames 8 --device cpu

    # a smoke run in seconds
    python -m training.train_cpm --recipe cpm_tiny

    # real data: a CMU hand-label folder (hand_labels/manual_train, hand_labels_synth/synth2, ...)
    python -m training.train_cpm --recipe cpm_light --data cmu:/data/hand_labels_synth/synth2

    # also train on hand-free crops (10 % of each batch, all-background targets), for scenes
    # whose clutter the network takes for hands
    python -m training.train_cpm --recipe cpm_light --negatives 4000 --negative-share 0.1

Frames are rendered (or read) once and cached as hand crops under ``--cache-dir``; the checkpoint
records the exact command line, the data seed and the held-out figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.training.cpm_task import RECIPES, CPMTask, cached_crop_set, make_evaluator
from handpose_core.training.harness import train
from training import command_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train_cpm",
        description=__doc__.split("\n\n")[0],
        epilog="Recipes: " + "; ".join(f"{k} ({v.model_name}, batch {v.train.batch_size}, lr {v.train.lr})"
                                        for k, v in RECIPES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", default="cpm_light", choices=sorted(RECIPES), help="named setup (default: cpm_light)")
    g = p.add_argument_group("optimisation (override the recipe)")
    g.add_argument("--steps", type=int, help="number of optimizer steps")
    g.add_argument("--time-budget", type=float, help="stop after this many seconds of training (0 = off); "
                   "the cosine LR schedule runs on the budget")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seed", type=int, help="training seed (batches, init)")
    g.add_argument("--sigma", type=float, help="Gaussian target std, input pixels")
    g.add_argument("--fg-weight", type=float, help="foreground weight of the L2 loss (0 = plain L2)")
    g.add_argument("--hands", choices=("right", "both"),
                   help="right: left hands' crops mirrored, the network learns right hands and the estimator "
                        "is told the hand (cpm_light's default); both: crops as they come, any hand at once")
    g.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="training source: synthetic | cmu:<folder>")
    d.add_argument("--data-seed", type=int, help="seed of the synthetic training frames")
    d.add_argument("--frames", type=int, help="number of training frames to render/read")
    d.add_argument("--eval-seed", type=int, help="seed of the held-out synthetic frames")
    d.add_argument("--eval-frames", type=int, help="number of held-out frames")
    d.add_argument("--negatives", type=int, help="cut hand-free crops from the first N training frames "
                   "(one per frame where one fits; used when --negative-share > 0)")
    d.add_argument("--negative-share", type=float, help="share of batch items drawn from the hand-free crops "
                   "(all-background targets; 0 = none)")
    d.add_argument("--eval-negatives", type=int, help="cut hand-free crops from N held-out frames for the "
                   "false-positive figures (0 = none)")
    d.add_argument("--cache-dir", help="where the crop caches live (default runs/cache)")
    d.add_argument("--workers", type=int, help="processes that render the cache")
    o = p.add_argument_group("output")
    o.add_argument("--out", help="run directory (last.pt, model.pt, result.json, tb/)")
    o.add_argument("--export", help="also write the final checkpoint here, with the held-out figures in meta")
    o.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    return p


def recipe_from_args(args: argparse.Namespace):
    base = RECIPES[args.recipe]
    train_fields = {k: v for k, v in {
        "steps": args.steps, "time_budget_s": args.time_budget, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "device": args.device, "resume": args.resume or None, "out_dir": args.out,
    }.items() if v is not None}
    if args.no_progress:
        train_fields["progress"] = False
    data_fields = {k: v for k, v in {
        "source": args.data, "seed": args.data_seed, "frames": args.frames, "eval_seed": args.eval_seed,
        "eval_frames": args.eval_frames, "cache_dir": args.cache_dir, "workers": args.workers,
        "negatives": args.negatives, "negative_share": args.negative_share, "eval_negatives": args.eval_negatives,
    }.items() if v is not None}
    recipe_fields = {k: v for k, v in {"sigma_px": args.sigma, "fg_weight": args.fg_weight,
                                       "hands": args.hands}.items() if v is not None}
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **train_fields),
                               data=dataclasses.replace(base.data, **data_fields), **recipe_fields)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal weights/grads can slow CPU convolutions many-fold
    recipe = recipe_from_args(args)
    command = command_line("training.train_cpm", argv)
    t0 = time.perf_counter()
    task = CPMTask(recipe, command=command, recipe_name=args.recipe)
    d = recipe.data
    train_data = task.data
    t_data = time.perf_counter() - t0
    eval_data = cached_crop_set(d.eval_source, d.eval_seed, d.eval_frames, d.cache_size, d.cache_margin,
                                d.cache_dir, d.workers)
    eval_free = None
    if d.eval_negatives > 0:
        eval_free = cached_crop_set(d.eval_source, d.eval_seed, d.eval_negatives, d.cache_size, d.cache_margin,
                                    d.cache_dir, d.workers, negative=True)
    train_free = task.negatives
    t_eval_data = time.perf_counter() - t0 - t_data
    logging.info("data ready: %d training crops + %d hand-free (%.0f s), %d held-out crops + %d hand-free (%.0f s)",
                 len(train_data), len(train_free) if train_free is not None else 0, t_data, len(eval_data),
                 len(eval_free) if eval_free is not None else 0, t_eval_data)
    result = train(task, recipe.train, evaluate=make_evaluator(task, eval_data, eval_free))
    result["data_seconds"] = t_data
    result["eval_data_seconds"] = t_eval_data
    result["wall_seconds"] = time.perf_counter() - t0
    if args.export:
        blob = load_checkpoint(result["checkpoint"])
        meta = dict(blob["meta"])
        meta["held_out"] = {"source": d.eval_source, "seed": d.eval_seed, "frames": len(eval_data),
                            "protocol": "crop around the GT 2D keypoints, margin 1.5, the network alone (not "
                                        "mirror-averaged as the RGB pipeline runs it: `python -m "
                                        "training.evaluate_cpm CKPT --record` stores those figures); PCK "
                                        "normalized by max(bbox w, h) of the GT keypoints", **result["eval"]}
        meta["provenance"] = {**meta.get("provenance", {}), "wall_seconds": result["wall_seconds"],
                              "data_seconds": t_data, "torch_threads": torch.get_num_threads()}
        save_checkpoint(args.export, blob["model"]["name"], blob["model"]["config"], blob["state_dict"], meta,
                        step=blob.get("step", 0))
        result["exported"] = str(Path(args.export))
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
