"""ONNX Runtime as a CPU backend: the torch model exported once at load, run by onnxruntime.

Why: for these small networks at batch 1, torch's per-operator overhead dominates on a CPU.
Measured on the 2-core AVX2 development machine (``bench/results/models.json``, one thread):
DeepPrior (``deep_prior_res``) 2.71 ms in torch, 0.76 ms in onnxruntime; the light CPM 11.6 ->
8.8 ms. The outputs agree with torch to ~1e-6 (``tests/test_inference_opt.py``).

The export uses torch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx``
package, where the newer exporter also needs ``onnxscript``. It is deprecated upstream; the
version pin in requirements.txt keeps it working, and a failed export falls back to torch.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from handpose_core.errors import HandPoseError

log = logging.getLogger(__name__)


def available() -> bool:
    """True when onnxruntime and onnx can be imported."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtModule:
    """A torch model's forward run by onnxruntime on the CPU.

    Called like the model: a (N, C, H, W) float32 CPU tensor -> a tensor, or a list of tensors
    when the model returns a list (CPM: one belief-map tensor per stage). ``.to()`` and ``.eval()``
    are accepted and do nothing, so pipelines treat it as a module.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int = 0, dynamic_hw: bool = False) -> None:
        import onnxruntime as ort

        model = model.eval()
        with torch.inference_mode():
            reference = model(example)
        self.multi_output = isinstance(reference, (list, tuple))
        n_out = len(reference) if self.multi_output else 1
        axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["x"],
                              output_names=[f"y{i}" for i in range(n_out)], dynamic_axes={"x": axes},
                              opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)  # 0: onnxruntime's default, one per physical core
        options.inter_op_num_threads = 1
        # No busy-waiting between operators: a spinning thread pool keeps every core busy between
        # frames, starving the DDS and executor threads that share a small robot CPU. Measured on the
        # 2-core development machine (bench.bench_node): node depth latency p50 20.4-23.0 ms with
        # spinning, 10-12 ms without; the DeepPrior network alone loses ~0.2 ms (0.33 -> 0.56 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.onnx_bytes = len(buffer.getvalue())
        got = self(example)
        for a, b in zip(got if self.multi_output else [got], reference if self.multi_output else [reference],
                        strict=True):
            scale = float(b.abs().max()) + 1e-6
            if a.shape != b.shape or float((a - b).abs().max()) > 1e-3 * scale:
                raise HandPoseError("onnxruntime output differs from torch's on the export example")

    def __call__(self, x: torch.Tensor):
        outputs = self.session.run(None, {"x": np.ascontiguousarray(x.detach().cpu().float().numpy())})
        tensors = [torch.from_numpy(o) for o in outputs]
        return tensors if self.multi_output else tensors[0]

    def to(self, *args, **kwargs) -> OrtModule:
        return self

    def eval(self) -> OrtModule:
        return self
