"""xtc_ext: fused losses for cross-task consistency and coherence multi-task learning.

Importing the package loads the compiled extension, which registers ``torch.ops.xtc_ext.*`` with their
CPU, CUDA and Meta (fake-tensor) kernels (``csrc/<op>.cpp``, registered from the op table
``csrc/op_table.h``), and the Python autograd of the ops (:mod:`xtc_ext.ops`). Public modules:

- :mod:`xtc_ext.ops`: the fused ops (``masked_cross_entropy``, ``masked_l1_loss``, ``soft_cross_entropy``,
  ``cosine_similarity_loss``, ``sigmoid_gate``).
- :mod:`xtc_ext.reference`: eager PyTorch references with the same signatures.
- :mod:`xtc_ext.losses` (XTasC-Net and MT-CP), :mod:`xtc_ext.weighting` (equal, uncertainty, DWA, GradNorm,
  LPS), :mod:`xtc_ext.regularizers` (the cross-task contrastive regularizer, docs/contrastive.md).
- :mod:`xtc_ext.tasks`: the task registry (one ``TaskSpec`` per task: sample key, channels, loss, meter,
  metrics, unit, void value, contrastive source kind, figure panel).
- :mod:`xtc_ext.data`, :mod:`xtc_ext.metrics`, :mod:`xtc_ext.visualize`: data readers, metrics, figures.
- ``python -m xtc_ext.train`` (training program, configs in ``xtc_ext/configs``) and
  ``python -m xtc_ext.evaluate`` (metrics, inference time and delta-m of a checkpoint).
"""

import torch  # noqa: F401  (libtorch must be loaded before the extension)

from xtc_ext._extension import load as _load

build_info = _load(__path__)
"""How ``xtc_ext._C`` was built: ``torch_version``, ``with_cuda``, ``cuda_arch_list``, ``nvcc_version``, ``compiler``, ``cxx11_abi``, ``source_hash``."""

from xtc_ext import ops, reference  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "reference", "build_info", "__version__"]
