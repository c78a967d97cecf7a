"""Write the NVlabs/edm SongUNet reference outputs that ``tests/models/test_songunet.py`` checks.

    python tools/edm_parity_reference.py --edm PATH/TO/edm \
        [--out tests/fixtures/edm_songunet_parity.npz]

Needs a checkout of the public NVlabs/edm repository (``PATH/TO/edm`` holds ``training/``
and ``torch_utils/``; the reference was produced at commit 008a4e5) and PyTorch. No EDM
code is copied here: the script imports ``training.networks.SongUNet`` from the checkout,
builds a tiny DDPM++ configuration (8², 8 channels, channel_mult (1, 2), one block per
resolution, attention at 4², a 3-d label and EDM's 9-d augment labels), sets every
parameter from ``numpy.random.default_rng(SEED)`` in sorted state-dict order (weights
``N(0, 1)/√fan_in``, biases and norms ``0.2·N(0, 1)``; fully reproducible), evaluates it on
fixed inputs and stores weights, inputs and outputs in one small ``.npz`` (float32). The test
converts the weights with :func:`augdiff.models.songunet.params_from_edm_state_dict` and
compares augdiff's output with the stored one, in CI, with no EDM checkout and no torch.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

SEED = 20221206
CONFIG = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=3, augment_dim=9,
              model_channels=8, channel_mult=[1, 2], channel_mult_emb=4, num_blocks=1,
              attn_resolutions=[4], dropout=0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edm", required=True, help="a checkout of NVlabs/edm")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), os.pardir,
                                                  "tests", "fixtures", "edm_songunet_parity.npz"))
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, os.path.abspath(args.edm))
    from training.networks import SongUNet  # the reference, from the checkout

    net = SongUNet(**CONFIG).eval()
    rng = np.random.default_rng(SEED)
    weights = {}
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if p.ndim > 1:
                w = rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
            else:
                w = 0.2 * rng.standard_normal(p.shape)
            p.copy_(torch.from_numpy(w.astype(np.float32)))
            weights[f"w/{name}"] = w.astype(np.float32)
    n = 4
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(n).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    aug = np.zeros((n, 9), np.float32)
    aug[2:] = rng.standard_normal((2, 9)).astype(np.float32)
    with torch.no_grad():
        out = net(*(torch.from_numpy(a) for a in (x, noise, labels, aug))).numpy()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, x=x, noise_labels=noise, class_labels=labels,
                        augment_labels=aug, output=out,
                        config=np.asarray(repr(CONFIG)), **weights)
    print(f"wrote {args.out}: {sum(w.size for w in weights.values())} parameters, "
          f"output std {out.std():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
