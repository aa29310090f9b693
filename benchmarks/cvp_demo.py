"""Benchmark: what CVP buys on the demo's trained tiny CLIP (zero-shot digits, shifted test set).

The demo encoder (`alkit.demo.train_clip.ensure_demo_model`, cached) classifies by class
prompts. Diagonal Laplace over the last k blocks from `--curvature` unlabelled pool images
(zero-shot likelihood, prior precision by evidence), calibrated on `--labelled` other pool
images with their labels, evaluated on the 500 shifted test images: accuracy, NLL, ECE of
- MAP: softmax of the zero-shot logits;
- MAP + temperature: the same logits / T, T fitted by NLL on the same labelled images (the
  baseline any calibrated uncertainty has to beat: it uses the same labels);
- CVP k: the probit predictive of the calibrated CVP moments (`alkit.cvp.predictive`);
- MC k: mean softmax over `--samples` weight draws of the same calibrated posterior.

    python -m benchmarks.cvp_demo                 # prints the load average before and after
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curvature", type=int, default=200)
    parser.add_argument("--labelled", type=int, default=200)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()

    import torch
    from scipy.optimize import minimize_scalar

    from alkit.cvp.blocks import prefix_tokens, propagate_tail
    from alkit.cvp.calibration import fit_calibration
    from alkit.cvp.laplace import fit_diagonal_laplace
    from alkit.cvp.montecarlo import sample_tail
    from alkit.cvp.predictive import probit_predictive
    from alkit.cvp.weights import sample_block_parameters
    from alkit.demo.data import class_prompts, images_to_tensor, make_demo_split
    from alkit.demo.tiny_clip import create_tiny_clip
    from alkit.demo.train_clip import ensure_demo_model
    from alkit.metrics.calibration import summary

    torch.set_num_threads(1)
    print(f"load average before: {os.getloadavg()}")
    started = time.perf_counter()
    model, preprocess, tokenizer = create_tiny_clip(ensure_demo_model())
    visual = model.visual
    split = make_demo_split(seed=0)
    curvature_images = images_to_tensor(split.pool_images[: args.curvature], preprocess)
    end = args.curvature + args.labelled
    labelled_images = images_to_tensor(split.pool_images[args.curvature : end], preprocess)
    labels = np.asarray(split.pool_labels[args.curvature : end])
    test_images = images_to_tensor(split.test_images, preprocess)
    test_labels = np.asarray(split.test_labels)
    with torch.no_grad():
        text = model.encode_text(tokenizer(class_prompts()), normalize=True)
        scale = float(model.logit_scale.exp())

        def map_logits(images):
            return (scale * model.encode_image(images, normalize=True) @ text.T).double().numpy()

        labelled_logits, test_logits = map_logits(labelled_images), map_logits(test_images)

    def labelled_nll(t: float) -> float:
        probs = _softmax(labelled_logits / t)
        return float(-np.mean(np.log(probs[np.arange(labels.size), labels] + 1e-300)))

    temperature = float(minimize_scalar(lambda lt: labelled_nll(float(np.exp(lt))), bounds=(-5, 5), method="bounded").x)
    rows = [("MAP", summary(_softmax(test_logits), test_labels)),
            (f"MAP + temperature {np.exp(temperature):.2f}", summary(_softmax(test_logits / np.exp(temperature)), test_labels))]
    for k in args.blocks:
        posterior = fit_diagonal_laplace(visual, prefix_tokens(visual, curvature_images, k), text, scale, k)
        calibration = fit_calibration(visual, prefix_tokens(visual, labelled_images, k), labels, posterior, text, scale)
        calibrated = calibration.apply(posterior)
        tokens = prefix_tokens(visual, test_images, k)
        with torch.no_grad():
            moments = propagate_tail(visual, tokens, calibrated)
        probs = probit_predictive(moments.pooled_mean, moments.pooled_var, visual.proj, text, scale, calibration.output_scale)
        scales = ", ".join(f"{s:.3g}" for s in calibration.block_scales)
        rows.append((f"CVP k={k} (block scales {scales}; output {calibration.output_scale:.3g})", summary(probs, test_labels)))
        generator = torch.Generator().manual_seed(0)
        tail = visual.transformer.resblocks[len(visual.transformer.resblocks) - k :]
        mc = 0.0
        for _ in range(args.samples):
            params = [sample_block_parameters(b, v, generator) for b, v in zip(tail, calibrated.blocks)]
            _, g = sample_tail(visual, tokens, params)
            mc = mc + torch.softmax(scale * (g / g.norm(dim=1, keepdim=True)) @ text.T, -1).double().numpy() / args.samples
        rows.append((f"MC k={k}, S={args.samples}, same posterior", summary(mc, test_labels)))
    print(f"{args.curvature} curvature / {args.labelled} labelled pool images, {test_labels.size} shifted test images")
    print(f"{'method':<62}{'accuracy':>10}{'NLL':>8}{'ECE':>8}")
    for name, row in rows:
        print(f"{name:<62}{row['accuracy']:>10.4f}{row['nll']:>8.4f}{row['ece']:>8.4f}")
    print(f"{time.perf_counter() - started:.1f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
