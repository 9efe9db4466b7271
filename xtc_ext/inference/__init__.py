"""Using a trained model: predictions on the user's images and exports (docs/inference.md).

- :mod:`~xtc_ext.inference.loading`: :func:`load_trained_model` (a checkpoint's model through its recipe),
  :class:`InferenceModel` (the evaluation graph: the recipe's inference predictions as a tuple).
- :mod:`~xtc_ext.inference.images`: finding, reading and fitting images; mapping predictions back.
- :mod:`~xtc_ext.inference.render`: the pictures and files of each task, the side-by-side sheet.
- :mod:`~xtc_ext.inference.predictor`: :func:`predict_files`, the batched loop of ``python -m xtc_ext.predict``.
- :mod:`~xtc_ext.inference.exporting`: ``torch.export``, AOTInductor and ONNX files of ``python -m xtc_ext.export``,
  checked against eager; :mod:`~xtc_ext.inference.runner` loads them (also in a fresh process).

This package sits between the command-line programs and :mod:`xtc_ext.cli` in the import layers
(``pyproject.toml``).
"""

from xtc_ext.inference.images import check_images, find_images, prepare, read_image, restore
from xtc_ext.inference.loading import SIZE_MULTIPLE, InferenceModel, TrainedModel, load_trained_model
from xtc_ext.inference.predictor import PredictOptions, predict_files

__all__ = [
    "check_images",
    "find_images",
    "prepare",
    "read_image",
    "restore",
    "SIZE_MULTIPLE",
    "InferenceModel",
    "TrainedModel",
    "load_trained_model",
    "PredictOptions",
    "predict_files",
]
