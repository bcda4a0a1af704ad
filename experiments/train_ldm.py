"""Train the bundled LDM-SR model: (1) the VQ autoencoder, (2) the conditional UNet.

The command of ``orl_gym.training``, whose docstring describes the stages, the run folder
(checkpoints, logs, the diffusers export and its model card), resuming and ``--init-from``;
``--help`` lists every option. The run records this file's path in its ``commands.log``.

Examples::

    ORL_GYM_DATA=../shared/data python experiments/train_ldm.py --out /tmp/ldm --vq-steps 6000 \\
        --unet-steps 20000
    python experiments/train_ldm.py --out /tmp/ldm --export-only --export orl_gym/assets/ldm-sr-tiny-x4
    # a 4x wider UNet on /tmp/ldm's autoencoder
    python experiments/train_ldm.py --out /tmp/ldm_wide --init-from /tmp/ldm --stages unet \\
        --unet-channels 64,128,128
    # fine-tune the shipped model's UNet (its autoencoder frozen) for 2,000 steps
    ORL_GYM_DATA=../shared/data python experiments/train_ldm.py --out /tmp/ft --init-from bundled \\
        --init-stages vq,unet --stages unet --unet-steps 2000 --unet-lr 2e-4 --unet-warmup 50
    # a residual model over a regression CNN (stage 0 first, then the VQ and UNet over it)
    ORL_GYM_DATA=../shared/data python experiments/train_ldm.py --out /tmp/anchored \
        --latent-target residual --latent-anchor network --stages anchor,vq,decoder,unet \
        --anchor-minutes 25 --unet-crop 128 --unet-batch-size 32 --prediction-type v_prediction
"""

from __future__ import annotations

# shutil and time: the modules whose functions tests/test_train_ldm.py patches through this script.
import shutil
import sys
import time

from orl_gym.data import PairDataset
from orl_gym.io import atomic_save
from orl_gym.training import cli
from orl_gym.training.card import EVAL_BEGIN, EVAL_END, attention_description
from orl_gym.training.checkpoints import build_model, load_vq_weights
from orl_gym.training.cli import resolve_config
from orl_gym.training.config import PREDICTION_TYPES, TrainConfig, parse_args
from orl_gym.training.loop import StageClock, StopFlag, lr_at
from orl_gym.training.unet import crop_batch, load_ema, predicted_z0, unet_loss_terms, unet_target

__all__ = [
    "EVAL_BEGIN",
    "EVAL_END",
    "PREDICTION_TYPES",
    "PairDataset",
    "StageClock",
    "StopFlag",
    "TrainConfig",
    "atomic_save",
    "attention_description",
    "build_model",
    "crop_batch",
    "load_ema",
    "load_vq_weights",
    "lr_at",
    "main",
    "parse_args",
    "predicted_z0",
    "resolve_config",
    "shutil",
    "time",
    "unet_loss_terms",
    "unet_target",
]


def main(argv: list[str] | None = None) -> int:
    """Train (or resume, or export) the run that ``argv`` names; see ``orl_gym.training.cli``."""
    return cli.main(argv, script=__file__)


if __name__ == "__main__":
    sys.exit(main())
