"""Import OpenPose's hand weights into a handpose ``cpm_openpose`` checkpoint.

Examples::

    python -m training.import_openpose models/hand/pose_iter_102000.caffemodel --out cpm_openpose.pt
    python -m training.import_openpose hand_pose_model.pth --out cpm_openpose.pt   # PyTorch conversion

The source is read without Caffe (a hand-written protobuf reader) or, for ``.pth``/``.pt``, with
``torch.load(weights_only=True)``. Every layer is checked by name and shape; the checkpoint records
OpenPose's input convention (BGR, x / 256 - 0.5, 368 px box) and the source's SHA-256. Use it with
``HandPoseEstimator.from_checkpoint("cpm_openpose.pt")``.
"""

from __future__ import annotations

import argparse
import sys

from handpose_core.errors import HandPoseError
from handpose_core.openpose_import import import_openpose


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.import_openpose", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="pose_iter_102000.caffemodel, or a PyTorch state dict (.pth/.pt)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--model", default="cpm_openpose", help="registered model to fill (default cpm_openpose)")
    args = p.parse_args(argv)
    try:
        path = import_openpose(args.source, args.out, model_name=args.model)
    except HandPoseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
