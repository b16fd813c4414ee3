"""Train DeepPrior (depth -> 3D joints) on synthetic hands, NYU, or a seed-layout HDF5 file.

Examples:
    python -m training.train_deep_prior --recipe default --time-budget-min 25 --out runs/deep_prior
    python -m training.train_deep_prior --recipe seed --time-budget-min 10 --out runs/deep_prior_seed
    python -m training.train_deep_prior --data nyu:/data/nyu/train --device cuda --out runs/nyu

Writes OUT/model.pt (inference checkpoint), OUT/last.pt (resume with --resume), OUT/result.json,
OUT/tb/ (TensorBoard: `tensorboard --logdir OUT/tb`) and, with --export, a copy of model.pt
carrying the held-out figures in its metadata.

``--fit-confidence CKPT`` trains nothing else: it gives a trained checkpoint a confidence head
(each joint's probability of lying within ``--confidence-mm`` of the truth), fitted on the
checkpoint's own recipe and the training frames while every other weight stays as it is, and
writes OUT/model.pt (and the --export copy):

    python -m training.train_deep_prior --fit-confidence handpose_core/weights/deep_prior_synth.pt \
        --out runs/confidence --export handpose_core/weights/deep_prior_synth.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from handpose_core.atomic import atomic_write
from handpose_core.checkpoint import load_checkpoint, save_checkpoint
from handpose_core.codecs.depth_crop import DepthCropCodec
from handpose_core.errors import HandPoseError
from handpose_core.models import create_model
from handpose_core.training.deep_prior_task import (
    CropSet,
    DeepPriorRecipe,
    DeepPriorTask,
    fit_confidence,
    recipe,
    synthetic_crops,
)
from handpose_core.training.harness import train
from training import command_line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="default", choices=["default", "seed"],
                   help="default: residual net, Adam, augmentation; seed: the seed notebook's Caffe recipe")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (default) | nyu:DIR (NYU train folder) | h5:FILE (seed-layout HDF5)")
    p.add_argument("--n-train", type=int, default=40000, help="synthetic training frames to render (cached)")
    p.add_argument("--n-val", type=int, default=1000, help="held-out synthetic frames for periodic evaluation")
    p.add_argument("--data-seed", type=int, default=1, help="generator seed of the training frames")
    p.add_argument("--model-config", metavar="JSON",
                   help='network settings over the recipe\'s, e.g. \'{"fc": [1024, 1024], "bottleneck": 30}\' '
                        "(the keyword arguments of handpose_core.models.deep_prior.DeepPrior; bottleneck sets the "
                        "PCA's k)")
    p.add_argument("--steps", type=int, help="optimisation steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's, 64)")
    p.add_argument("--lr", type=float, help="base learning rate (default: the recipe's)")
    p.add_argument("--input-size", type=int, help="side of the model's depth crop, px (default: the recipe's)")
    p.add_argument("--align", metavar="JOINT_A,JOINT_B",
                   help="turn the second pass's crop so that joint A -> joint B points up (e.g. wrist,middle_mcp), "
                        "as the model learns on its joint-centred crops; 'auto': the joint layout's wrist-to-palm "
                        "axis; 'none': off (default: the recipe's; default recipe auto, seed none)")
    p.add_argument("--hands", choices=("right", "both"),
                   help="right: left hands' crops mirrored, the network learns right hands and the estimator "
                        "is told the hand (default recipe); both: random mirroring, any hand at once (seed recipe)")
    p.add_argument("--random-fingers-share", type=float, metavar="SHARE",
                   help="share of each batch drawn from the synthetic frames whose finger angles are uniform "
                        "within their limits rather than a gesture (about half the frames; default: the "
                        "recipe's, 0 = every frame equally likely)")
    p.add_argument("--time-budget-min", type=float, default=0.0, help="stop after this many minutes (0 = off)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order, augmentation and init")
    p.add_argument("--out", default="runs/deep_prior", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--cache-dir", default="runs/cache", help="where rendered crops are cached")
    p.add_argument("--workers", type=int, default=2, help="processes rendering synthetic frames")
    p.add_argument("--export", help="also copy the final model here (e.g. handpose_core/weights/deep_prior_synth.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--fit-confidence", metavar="CKPT",
                   help="only fit a confidence head onto this trained checkpoint (its other weights unchanged; "
                        "--steps default 2000, --batch-size 256; ~5 min on 2 CPU cores) and write OUT/model.pt")
    p.add_argument("--confidence-mm", type=float, default=DeepPriorRecipe.confidence_mm,
                   help="the confidence head's distance: it gives each joint's probability of lying within this "
                        "many mm of the truth (default %(default)s)")
    return p


def load_training_data(args, codec: DepthCropCodec, big_factor: float = DeepPriorRecipe.big_factor,
                       max_offset_mm: float = DeepPriorRecipe.max_search_offset_mm
                       ) -> tuple[CropSet, tuple[str, ...], dict]:
    """(crops, joint names, provenance) for the --data source.

    Synthetic frames are cached as big crops (``big_factor`` x the cube, searched centres kept up to
    ``max_offset_mm`` off the hand) so training can re-centre them; NYU frames and seed-HDF5 crops
    come at the codec's cube (big_factor 1).
    """
    if args.data == "synthetic":
        from handpose_core.keypoints import HAND21

        data = synthetic_crops(args.n_train, args.data_seed, codec, args.cache_dir, workers=getattr(args, "workers", 2),
                               progress=not args.no_progress, big_factor=big_factor, max_offset_mm=max_offset_mm)
        return data, HAND21.joint_names, {"data": "synthetic", "data_seed": args.data_seed, "n_train": args.n_train,
                                          "located_fraction": round(data.meta["located_fraction"], 4)}
    kind, _, location = args.data.partition(":")
    if kind == "nyu":
        from handpose_core.data.nyu import NYUDataset, encode_dataset

        dataset = NYUDataset(location)
        crops, labels = encode_dataset(dataset, codec, progress=not args.no_progress)
        return CropSet.plain(crops, labels), dataset.joint_names, {"data": args.data, "n_train": len(crops)}
    if kind == "h5":
        from handpose_core.data.hdf5_io import read_hdf5

        data = read_hdf5(location, raw=False)
        crops = np.asarray(data["image/train"], dtype=np.float16).reshape(len(data["image/train"]), codec.size, -1)
        labels = np.asarray(data["label/train"], dtype=np.float32)
        names = tuple(data.get("joint_names") or [str(j) for j in range(labels.shape[1] // 3)])
        return CropSet.plain(crops, labels), names, {"data": args.data, "n_train": len(crops)}
    raise HandPoseError(f"--data must be synthetic, nyu:DIR or h5:FILE, got {args.data!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_confidence:
        return fit_confidence_main(args, argv)
    rcp = recipe(args.recipe)
    rcp.confidence_mm = args.confidence_mm
    cfg = rcp.train
    cfg.out_dir, cfg.device, cfg.seed, cfg.resume = args.out, args.device, args.seed, args.resume
    cfg.progress = not args.no_progress
    cfg.time_budget_s = args.time_budget_min * 60.0
    for name in ("steps", "batch_size", "lr"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.eval_every = max(1000, cfg.steps // 10)
    if args.input_size is not None:
        rcp.input_size = args.input_size
    if args.hands is not None:
        rcp.hands = args.hands
    if args.random_fingers_share is not None:
        if not 0.0 <= args.random_fingers_share <= 1.0:  # before the training frames are rendered
            print(f"error: --random-fingers-share must be within [0, 1], got {args.random_fingers_share}",
                  file=sys.stderr)
            return 2
        rcp.random_fingers_share = args.random_fingers_share
    if args.model_config:
        try:
            extra = json.loads(args.model_config)
            if not isinstance(extra, dict):
                raise ValueError("not a JSON object")
            bottleneck = int(extra.pop("bottleneck", rcp.bottleneck))
        except (ValueError, TypeError) as exc:
            print(f"error: --model-config must be a JSON object, got {args.model_config!r} ({exc})", file=sys.stderr)
            return 2
        rcp.bottleneck = bottleneck
        rcp.model_config = {**rcp.model_config, **extra}
        try:  # before the data: a typo should not wait for minutes of rendering
            create_model(rcp.model, bottleneck=rcp.bottleneck, **rcp.model_config)
        except (TypeError, ValueError, HandPoseError) as exc:
            print(f"error: --model-config does not fit {rcp.model}: {exc}", file=sys.stderr)
            return 2
    if args.align in ("auto", "none"):
        rcp.align = None if args.align == "none" else "auto"
    elif args.align:
        pair = tuple(name.strip() for name in args.align.split(","))
        if len(pair) != 2:
            print(f"error: --align takes two joint names separated by a comma, got {args.align!r}", file=sys.stderr)
            return 2
        rcp.align = pair
    codec = DepthCropCodec()  # crops are cached at this size x big_factor; the task resamples them
    t_data = time.perf_counter()
    try:
        data, names, provenance = load_training_data(args, codec, rcp.big_factor, rcp.max_search_offset_mm)
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    provenance["command"] = command_line("training.train_deep_prior", argv)
    provenance["data_seconds"] = round(time.perf_counter() - t_data, 1)
    try:
        task = DeepPriorTask(rcp, data, codec=codec, joint_names=names, provenance=provenance)
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"training data ready in {provenance['data_seconds']:.0f} s: {len(data)} crops; PCA k={rcp.bottleneck} "
          f"residual {task.pca_residual_mm:.2f} mm", flush=True)

    evaluate = None
    if args.data == "synthetic" and args.n_val > 0:
        # First-pass crops at the searched centre, as the estimator cuts them; errors in mm at the cube's scale.
        val = synthetic_crops(args.n_val, args.data_seed + 1_000_000, codec, args.cache_dir,
                              workers=args.workers, progress=not args.no_progress, big_factor=rcp.big_factor,
                              max_offset_mm=rcp.max_search_offset_mm)
        x_val, y_val = recrop_plain(val, task.codec)

        def evaluate(model, device):
            preds = torch.cat([model(x_val[i:i + 256].to(device))[..., :3].float().cpu()
                               for i in range(0, len(x_val), 256)])
            err = torch.linalg.vector_norm(preds - y_val, dim=-1) * (task.codec.cube_mm / 2)
            return {"val_approx_mean_mm": float(err.mean()),
                    "val_approx_within_40mm": float((err.max(dim=1).values <= 40).float().mean())}

    result = train(task, cfg, evaluate)
    print(f"done: {result['step']} steps in {result['seconds'] / 60:.1f} min, final loss {result['final_loss']:.4g}, "
          f"eval {result['eval']}; checkpoint {result['checkpoint']}")
    if args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["checkpoint"], args.export)
        print(f"exported to {args.export}")
    return 0


def checkpoint_recipe(meta: dict) -> DeepPriorRecipe:
    """The :class:`DeepPriorRecipe` a checkpoint was trained with (``meta["recipe"]``; fields it predates
    take their defaults)."""
    known = DeepPriorRecipe.__dataclass_fields__
    stored = {k: v for k, v in meta.get("recipe", {}).items() if k in known and k != "train"}
    for name in ("rotation_average", "align"):  # tuples, stored as JSON-style lists
        if isinstance(stored.get(name), list):
            stored[name] = tuple(stored[name])
    return DeepPriorRecipe(**stored)


def fit_confidence_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--fit-confidence``: a trained checkpoint + a fitted confidence head -> OUT/model.pt (see the module doc)."""
    try:
        blob = load_checkpoint(args.fit_confidence)
        meta = blob["meta"]
        if meta.get("modality") != "depth" or blob["model"]["name"] not in ("deep_prior_res", "deep_prior_seed"):
            raise HandPoseError(f"{args.fit_confidence} is not a DeepPrior checkpoint")
        rcp = checkpoint_recipe(meta)
        rcp.confidence, rcp.confidence_mm = True, args.confidence_mm
        config = {**blob["model"]["config"], "confidence": True}
        model = create_model(blob["model"]["name"], **config)
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
        if unexpected or any(not k.startswith("confidence.") for k in missing):
            raise HandPoseError(f"{args.fit_confidence}: weights do not fit {blob['model']['name']} "
                                f"(missing {missing}, unexpected {unexpected})")
        data, names, _ = load_training_data(args, DepthCropCodec(), rcp.big_factor, rcp.max_search_offset_mm)
        if tuple(names) != tuple(meta["joint_names"]):
            raise HandPoseError(f"the training data's joints {names} are not the checkpoint's {meta['joint_names']}")
        task = DeepPriorTask(rcp, data, codec=DepthCropCodec(), joint_names=names, pca_samples=400)
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    fit = fit_confidence(model, task, steps=args.steps or 2000, batch_size=args.batch_size or 256,
                         seed=args.seed, progress=not args.no_progress)
    fit.update({"within_mm": args.confidence_mm, "seconds": round(time.perf_counter() - t0, 1),
                "command": command_line("training.train_deep_prior", argv)})
    meta = {**meta, "inference": {**meta.get("inference", {}), "confidence_mm": float(args.confidence_mm)},
            "confidence": fit}
    meta["recipe"] = {**meta.get("recipe", {}), "confidence": True, "confidence_mm": float(args.confidence_mm)}
    out = Path(args.out) / "model.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, blob["model"]["name"], config, model.state_dict(), meta, step=blob.get("step", 0))
    print(f"confidence head fitted in {fit['seconds'] / 60:.1f} min ({fit['steps']} steps, final BCE "
          f"{fit['final_bce']:.4f}); checkpoint {out}")
    if args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.export, lambda tmp: shutil.copyfile(out, tmp))  # may replace the packaged weights
        print(f"exported to {args.export}")
    return 0


def recrop_plain(data: CropSet, codec: DepthCropCodec) -> tuple[torch.Tensor, torch.Tensor]:
    """The codec's crops at each item's stored centre (no augmentation) and their labels."""
    from handpose_core.training.deep_prior_task import recrop

    n = len(data)
    crops = torch.from_numpy(np.asarray(data.crops, dtype=np.float32))[:, None]
    labels = torch.from_numpy(np.asarray(data.labels, dtype=np.float32).reshape(n, -1, 3))
    zeros = torch.zeros(n)
    return recrop(crops, labels, torch.zeros(n, 3), zeros, torch.ones(n), torch.zeros(n, dtype=torch.bool),
                  data.big_factor, codec.size)


if __name__ == "__main__":
    sys.exit(main())
