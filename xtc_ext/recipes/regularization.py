"""The cross-task contrastive regularizer as a plug-in of any recipe whose host has two or more tasks.

``--contrastive`` adds :class:`~xtc_ext.regularizers.CrossTaskContrastive` (Yang, Ye, Xu, "Contrastive
Multi-Task Dense Prediction", AAAI 2023; docs/contrastive.md) to the host's own loss:

    ``total = host total + --contrastive-weight * (1/|T|) sum_t L_tri(t, s_t)``

with, per target task t, a source task s_t drawn from the other tasks at every step from the training
loop's checkpointed generator. The host exposes its per-task pre-head features (``model(x).features``,
``model.feature_channels``: :mod:`python_models.interface`); the labels are the batch's targets. It composes
with the hosts' own cross-task terms (XTasC-Net consistency, MT-CP coherence).

The projectors are a training-only module (:meth:`ContrastivePlugin.build`, the recipe's auxiliary module):
trained and checkpointed with the run, never part of the evaluated model, so the parameter count and
inference time of ``python -m xtc_ext.evaluate`` are those of the host.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from xtc_ext.regularizers import DEPTH_CRITERIA, MINING, CrossTaskContrastive, save_distance_figure
from xtc_ext.recipes.errors import option_error
from xtc_ext.tasks import get_task

__all__ = ["ContrastivePlugin", "add_contrastive_arguments", "check_contrastive_args"]


def add_contrastive_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--contrastive*`` options (one group; every recipe with a multi-task host accepts them)."""
    g = parser.add_argument_group("cross-task contrastive regularizer (Yang, Ye, Xu, AAAI 2023; docs/contrastive.md)")
    g.add_argument("--contrastive", action=argparse.BooleanOptionalAction, default=False,
                   help="add the cross-task contrastive regularizer to the loss (training only: the evaluated model "
                   "is unchanged); models with two or more tasks (xtasc, mtnet, align, mtcp)")
    g.add_argument("--contrastive-weight", type=float, default=0.1, help="lambda of the regularizer")
    g.add_argument("--contrastive-margin", type=float, default=0.5, help="triplet margin on unit-vector distances")
    g.add_argument("--contrastive-anchors", type=int, default=512, help="anchors per image and target task")
    g.add_argument("--contrastive-embed-dim", type=int, default=128, help="projection width D")
    g.add_argument("--contrastive-depth-thresholds", type=float, nargs=2, metavar=("POS", "NEG"), default=(0.05, 0.20),
                   help="depth source: |log d_a - log d_j| <= POS is a positive, >= NEG a negative")
    g.add_argument("--contrastive-normals-thresholds", type=float, nargs=2, metavar=("POS", "NEG"),
                   default=(11.25, 30.0), help="normals source: angle (degrees) <= POS positive, >= NEG negative")
    g.add_argument("--contrastive-depth-criterion", choices=DEPTH_CRITERIA, default="thresholds",
                   help="depth source: 'thresholds' (--contrastive-depth-thresholds) or 'ordering' (a negative is "
                   "farther in log-depth from the anchor than the positive by at least --contrastive-depth-gap)")
    g.add_argument("--contrastive-depth-gap", type=float, default=0.15, metavar="GAMMA",
                   help="ordering criterion: |log d_a - log d_n| - |log d_a - log d_p| >= GAMMA")
    g.add_argument("--contrastive-cross-image", action=argparse.BooleanOptionalAction, default=False,
                   help="draw positives and negatives from every image of the batch, not only the anchor's")
    g.add_argument("--contrastive-mining", choices=MINING, default="random",
                   help="negatives, among the random one and --contrastive-pool candidates: 'random' (no mining), "
                   "'semihard' (FaceNet: the nearest in embedding space farther than the positive, else the "
                   "farthest), 'closest' (the nearest valid negative)")
    g.add_argument("--contrastive-pool", type=int, default=1024,
                   help="mining candidates per image ('semihard', 'closest')")


def check_contrastive_args(args: argparse.Namespace, tasks: Sequence[str]) -> None:
    """Refuse ``--contrastive`` for a single-task run and bad values (the message names the option)."""
    if not args.contrastive:
        return
    if len(tasks) < 2:
        raise option_error(f"--contrastive needs a model with two or more tasks (this run has {', '.join(tasks)})")
    checks = [
        (args.contrastive_weight >= 0, f"--contrastive-weight must be >= 0, got {args.contrastive_weight}"),
        (args.contrastive_margin > 0, f"--contrastive-margin must be > 0, got {args.contrastive_margin}"),
        (args.contrastive_anchors >= 1, f"--contrastive-anchors must be >= 1, got {args.contrastive_anchors}"),
        (args.contrastive_embed_dim >= 1, f"--contrastive-embed-dim must be >= 1, got {args.contrastive_embed_dim}"),
        (args.contrastive_pool >= 1, f"--contrastive-pool must be >= 1, got {args.contrastive_pool}"),
        (0 < args.contrastive_depth_gap < math.inf,
         f"--contrastive-depth-gap must be a finite number > 0, got {args.contrastive_depth_gap}"),
    ]
    for ok, message in checks:
        if not ok:
            raise option_error(message)


class ContrastivePlugin:
    """The regularizer of one run: builds it for a host, adds its term to a step, logs its draws, draws the
    anchor-distance figure.

    Args:
        args: the run's arguments (the ``--contrastive*`` options).
        tasks: the host's canonical tasks (the targets; each is a source of the others).
    """

    def __init__(self, args: argparse.Namespace, tasks: Sequence[str]) -> None:
        self.args, self.tasks = args, tuple(tasks)
        self.module: Optional[CrossTaskContrastive] = None
        self.draws: Counter = Counter()

    def build(self, model: nn.Module) -> CrossTaskContrastive:
        """The regularizer for ``model``'s features (``model.feature_channels``).

        Raises:
            ValueError: the model does not expose features for every task of the run.
        """
        channels = dict(getattr(model, "feature_channels", {}))
        missing = [t for t in self.tasks if t not in channels]
        if missing:
            raise ValueError(f"--contrastive: the model exposes no pre-head features for {missing} "
                             f"(feature_channels: {sorted(channels)})")
        a = self.args
        specs = [get_task(t) for t in self.tasks]
        no_kind = [spec.name for spec in specs if spec.contrastive_kind is None]
        if no_kind:
            raise ValueError(f"--contrastive: task {no_kind[0]!r} has no contrastive source kind")
        self.module = CrossTaskContrastive(
            {t: channels[t] for t in self.tasks}, {spec.name: spec.contrastive_kind for spec in specs},
            ignore_index={spec.name: spec.void for spec in specs},
            embed_dim=a.contrastive_embed_dim, margin=a.contrastive_margin, anchors=a.contrastive_anchors,
            depth_thresholds=tuple(a.contrastive_depth_thresholds),
            normals_thresholds_deg=tuple(a.contrastive_normals_thresholds), mining=a.contrastive_mining,
            semihard_pool=a.contrastive_pool, depth_criterion=a.contrastive_depth_criterion,
            depth_gap=a.contrastive_depth_gap, cross_image=a.contrastive_cross_image)
        return self.module

    @staticmethod
    def labels(batch: Mapping[str, Any], tasks: Sequence[str], device: torch.device) -> Tuple[Dict, Dict]:
        """``(labels, valid)`` of a batch for the regularizer: the raw targets by canonical task and the
        validity masks the readers provide (depth, normals)."""
        keys = {t: get_task(t).sample_key for t in tasks}
        labels = {t: batch[key].to(device, non_blocking=True) for t, key in keys.items()}
        valid = {t: batch[f"{key}_valid"].to(device, non_blocking=True)
                 for t, key in keys.items() if f"{key}_valid" in batch}
        return labels, valid

    def term(self, output: Any, batch: Mapping[str, Any], device: torch.device,
             generator: torch.Generator) -> Tensor:
        """``--contrastive-weight`` times the regularizer's loss on this step's features (float32 scalar)."""
        labels, valid = self.labels(batch, self.tasks, device)
        out = self.module(output.features, labels, valid, generator)
        self.draws.update(f"{t}<-{s}" for t, s in out.sources.items())
        return self.args.contrastive_weight * out.loss

    def epoch_log(self) -> Dict[str, Any]:
        """The epoch's source draws per (target, source) pair (``draws_semseg<-depth``: steps), then reset."""
        log = {f"draws_{pair}": n for pair, n in sorted(self.draws.items())}
        self.draws.clear()
        return log

    @torch.no_grad()
    def figure(self, model: nn.Module, sample: Mapping[str, Any], path: Path, device: torch.device,
               title: str) -> List[Path]:
        """The anchor-distance figure (:func:`xtc_ext.regularizers.save_distance_figure`) of one sample: the
        same anchor (seed 0) before and after training, so the two PNGs compare directly."""
        was_training = model.training
        model.eval()
        image = sample["image"].unsqueeze(0).to(device)
        features = {t: f[:1] for t, f in model(image).features.items()}
        batch = {k: v.unsqueeze(0) for k, v in sample.items() if isinstance(v, Tensor)}
        labels, valid = self.labels(batch, self.tasks, device)
        save_distance_figure(self.module, features, labels, path, valid=valid, seed=0, title=title)
        model.train(was_training)
        return [path]
