"""RQ-VAE beside RQ-KMeans (and semantic-id 0.2.5's RQ-VAE) on the same generated catalog.

Run: ``make bench-vae``. Prints, for each model: fit seconds (and seconds per epoch), encode
rows/s on numpy, codebook utilisation per level, collision share (items whose full code is
shared) and reconstruction MSE, then ratios against RQ-KMeans measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from semid_spark.algorithms.rq_kmeans import RQKMeans
from semid_spark.algorithms.rq_vae import RQVAE
from semid_spark.synthetic import generated_catalog


def quality(model, x: np.ndarray, codes: np.ndarray) -> dict:
    n_levels = codes.shape[1]
    # ours say their fitted sizes by their codebooks; semantic-id's models by their list parameters
    sizes = getattr(model, "codebook_sizes", None) or list(getattr(model, "n_clusters", None) or model.num_emb_list)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "utilization": [round(len(np.unique(codes[:, lv])) / sizes[lv], 3) for lv in range(n_levels)],
        "collision_share": float(counts[counts > 1].sum() / len(codes)),
        "recon_mse": float(((x - model.decode(codes)) ** 2).mean()),
    }


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--topics", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--codes", type=int, default=256)
    parser.add_argument("--original-epochs", type=int, default=2, help="0 skips semantic-id 0.2.5")
    args = parser.parse_args()
    x = generated_catalog(args.items, args.dim, args.topics, 0)
    sizes = [args.codes] * 3
    print(f"catalog {x.shape}, {args.topics} topics; 3 x {args.codes} codes; RQ-VAE {args.epochs} epochs, "
          "layers [512, 256, 128], e_dim 32, batch 2048, lr 1e-3, kmeans_init")

    rows = {}
    km, fit_s = timed(lambda: RQKMeans(3, sizes, random_state=0).fit(x))
    codes, enc_s = timed(lambda: km.encode(x))
    rows["RQ-KMeans"] = {"fit_s": fit_s, "per_epoch_s": float("nan"), "encode_rows_s": len(x) / enc_s, **quality(km, x, codes)}

    def vae(**kw):
        return RQVAE(in_dim=args.dim, num_emb_list=sizes, e_dim=32, layers=[512, 256, 128], lr=1e-3,
                     batch_size=2048, epochs=args.epochs, kmeans_init=True, random_state=0, **kw)

    for name, kw in (("RQ-VAE", {}), ("RQ-VAE, no dead-code reset", {"reset_dead_codes": False})):
        model, fit_s = timed(lambda: vae(**kw).fit(x))
        codes, enc_s = timed(lambda: model.encode(x))
        rows[name] = {"fit_s": fit_s, "per_epoch_s": fit_s / args.epochs, "encode_rows_s": len(x) / enc_s,
                      **quality(model, x, codes)}

    if args.original_epochs:
        try:
            from semantic_id.algorithms.rq_vae import RQVAE as Original
        except ImportError:
            print("semantic-id 0.2.5 is not installed; skipping it")
        else:
            original = Original(in_dim=args.dim, num_emb_list=sizes, e_dim=32, layers=[512, 256, 128], lr=1e-3,
                                batch_size=2048, epochs=args.original_epochs, kmeans_init=True)
            _, fit_s = timed(lambda: original.fit(x))
            codes, enc_s = timed(lambda: original.encode(x))
            q = {"utilization": [round(len(np.unique(codes[:, lv])) / args.codes, 3) for lv in range(3)],
                 "collision_share": float((lambda c: c[c > 1].sum())(np.unique(codes, axis=0, return_counts=True)[1]) / len(x)),
                 "recon_mse": float(((x - original.decode(codes)) ** 2).mean())}
            rows[f"semantic-id 0.2.5 RQ-VAE ({args.original_epochs} epochs)"] = {
                "fit_s": fit_s, "per_epoch_s": fit_s / args.original_epochs, "encode_rows_s": len(x) / enc_s, **q}

    print(f"{'model':<42} {'fit s':>8} {'s/epoch':>8} {'enc rows/s':>11} {'collide':>8} {'recon MSE':>10}  utilisation")
    for name, r in rows.items():
        print(f"{name:<42} {r['fit_s']:8.1f} {r['per_epoch_s']:8.2f} {r['encode_rows_s']:11,.0f} "
              f"{r['collision_share']:8.4f} {r['recon_mse']:10.4f}  {r['utilization']}")
    base = rows["RQ-KMeans"]
    for name, r in rows.items():
        if name != "RQ-KMeans":
            print(f"ratio {name} / RQ-KMeans: recon MSE {r['recon_mse'] / base['recon_mse']:.3f}, collision share "
                  f"{r['collision_share'] / max(base['collision_share'], 1e-12):.3f}, encode speed "
                  f"{r['encode_rows_s'] / base['encode_rows_s']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
