"""Is preset `seed` the reference's Keras code, step by step? Run both on the same numbers and compare.

    python benchmarks/keras_equivalence.py [--steps 50] [--keras-venv .venv-keras]

TensorFlow/Keras is never a digitrec dependency: the first run makes a virtual environment of its
own (`--keras-venv`, ~600 MB) and installs TensorFlow there; this script then runs itself in it for
the Keras half and exchanges plain .npz files with it.

1. Training. Keras builds the reference's Sequential model (its own Glorot-uniform weights);
   digitrec's SeedNet copies those initial weights (kernels transposed; the first dense layer's
   rows permuted from Keras's (h, w, c) flatten to PyTorch's (c, h, w)). Both take the same `steps`
   batches of 86 MNIST images with augmentation and dropout off, RMSprop(lr 0.001, rho 0.9,
   eps 1e-8) at the plateau schedule's rate for the first epoch (0.001: the rate moves only between
   epochs). Printed: each step's loss on both sides, and the largest weight difference at the end.
2. Augmentation. Keras's ImageDataGenerator draws transform parameters for a batch and applies
   them; the same parameters, mapped to digitrec's convention, go through augment.random_affine.
   Printed: the largest pixel difference.
3. RMSprop's epsilon. One step on one weight tells whether this Keras adds epsilon outside the
   square root (Keras 2.0-2.2, the reference's era, and PyTorch) or inside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TENSORFLOW = "tensorflow-cpu==2.21.0"  # bundles Keras 3; scipy for ImageDataGenerator's interpolation
SCIPY = "scipy>=1.13"
BATCH = 86
LR, RHO, EPS = 1e-3, 0.9, 1e-8
AUGMENT = {"rotation_range": 10, "zoom_range": 0.1, "width_shift_range": 0.1, "height_shift_range": 0.1}
AUGMENT_IMAGES = 64


# ---------------------------------------------------------------------------------------------
# the Keras half (runs inside the Keras virtual environment; imports neither torch nor digitrec)


def keras_model():
    import keras
    from keras import layers

    return keras.Sequential([  # the reference notebook's model, layer for layer
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (5, 5), padding="same", activation="relu"),
        layers.Conv2D(32, (5, 5), padding="same", activation="relu"),
        layers.MaxPool2D(pool_size=(2, 2)),
        layers.Dropout(0.25),
        layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
        layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
        layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def keras_side(work: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    data = np.load(work / "batches.npz")
    model = keras_model()
    initial = model.get_weights()
    np.savez(work / "keras_initial.npz", *initial)

    def rmsprop_2017(grads, variables, velocities):
        """Keras 2.0-2.2's RMSprop.get_updates, the reference's: epsilon outside the square root."""
        for g, w, v in zip(grads, variables, velocities):
            v.assign(RHO * v + (1.0 - RHO) * tf.square(g))
            w.assign_sub(LR * g / (tf.sqrt(v) + EPS))

    for rule in ("keras3", "keras2017"):
        model.set_weights(initial)
        optimizer = keras.optimizers.RMSprop(learning_rate=LR, rho=RHO, epsilon=EPS)
        velocities = [tf.Variable(tf.zeros_like(w)) for w in model.trainable_variables]
        losses = []
        for x, y in zip(data["x"], data["y"]):  # x (B, 28, 28) float32 in [0, 1]
            x = tf.constant(x[..., None])
            y = tf.one_hot(y, 10)
            with tf.GradientTape() as tape:
                probs = model(x, training=False)  # dropout off
                loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y, probs))
            grads = tape.gradient(loss, model.trainable_variables)
            if rule == "keras3":
                optimizer.apply_gradients(zip(grads, model.trainable_variables))
            else:
                rmsprop_2017(grads, model.trainable_variables, velocities)
            losses.append(float(loss))
        np.savez(work / f"{rule}_final.npz", *model.get_weights())
        np.save(work / f"{rule}_losses.npy", np.array(losses))

    # RMSprop's epsilon: one step from w = 0 with gradient g, where sqrt(v) and eps are comparable
    w = keras.Variable(np.zeros(1, np.float32))
    probe = keras.optimizers.RMSprop(learning_rate=1.0, rho=RHO, epsilon=1e-2)
    probe.apply_gradients([(tf.constant([1e-2], tf.float32), w)])
    np.save(work / "keras_rmsprop_probe.npy", np.array(w.numpy()))

    # augmentation: Keras draws and applies the transforms
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it here

    generator = ImageDataGenerator(**AUGMENT, fill_mode="nearest")
    images = np.load(work / "augment_in.npy")  # (N, 28, 28) float32
    params, out = [], []
    for k, image in enumerate(images):
        p = generator.get_random_transform(image[..., None].shape, seed=k)
        params.append([p["theta"], p["tx"], p["ty"], p["zx"], p["zy"]])
        out.append(generator.apply_transform(image[..., None], p)[..., 0])
    np.save(work / "keras_augment_params.npy", np.array(params, np.float64))
    np.save(work / "keras_augment_out.npy", np.array(out, np.float32))
    print(f"keras {keras.__version__} (tensorflow {tf.__version__}): done")


# ---------------------------------------------------------------------------------------------
# the digitrec half


def keras_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} with {TENSORFLOW} (once; a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    check = subprocess.run([str(python), "-c", "import tensorflow, keras, scipy"], capture_output=True)
    if check.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", TENSORFLOW, SCIPY], check=True)
    return python


def to_torch_state(weights: list[np.ndarray], model) -> dict:
    """Keras's weight list (kernel, bias per layer) as SeedNet's state dict."""
    import torch

    state, layers = {}, [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    names = {id(m): n for n, m in model.named_modules()}
    for k, layer in enumerate(layers):
        kernel, bias = weights[2 * k], weights[2 * k + 1]
        if kernel.ndim == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
            kernel = kernel.transpose(3, 2, 0, 1)
        else:  # (in, out) -> (out, in)
            kernel = kernel.T
            if kernel.shape[1] == 64 * 7 * 7:  # Keras flattens (h, w, c), PyTorch (c, h, w)
                kernel = kernel.reshape(-1, 7, 7, 64).transpose(0, 3, 1, 2).reshape(kernel.shape[0], -1)
        state[f"{names[id(layer)]}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{names[id(layer)]}.bias"] = torch.from_numpy(bias)
    return state


def train_steps(model, batches_x: np.ndarray, batches_y: np.ndarray, cfg, dtype=None) -> list[float]:
    """train.train_one_epoch's step (zero_grad, forward, loss, backward, step), dropout and augmentation off.
    `dtype` float64 runs the same steps in double precision, to show how far float32 rounding alone goes."""
    import torch
    import torch.nn.functional as F

    from digitrec.nets.augment import to_float
    from digitrec.training.optim import build_optimizer

    optimizer = build_optimizer(model, cfg)
    model.eval()  # dropout off; SeedNet has nothing else that eval() changes
    losses = []
    for x, y in zip(batches_x, batches_y):
        xb = to_float(np.round(x * 255).astype(np.uint8))
        if dtype is not None:
            xb = xb.to(dtype)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), torch.from_numpy(y), label_smoothing=cfg.label_smoothing)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def digitrec_augment(images: np.ndarray, keras_params: np.ndarray, cfg) -> np.ndarray:
    """augment.random_affine on `images` with Keras's drawn parameters instead of its own draws.

    Keras's matrix is rotation @ shift @ zoom about the image centre, mapping output to input
    coordinates; for channels-last images it ends up acting on (column, row) = (x, y) (it swaps its
    two axes before calling scipy), so its `tx` moves the digit along x although it is drawn from
    `height_shift_range` (the same range here), and `zx` zooms x. Its shift is applied before the
    rotation: in digitrec's matrix (augment.affine_matrices, shift added last) that is the shift
    (tx, ty) rotated. Pixels are 2 / 28 of digitrec's [-1, 1] units, the same in both directions.
    """
    import torch

    from digitrec.nets import augment
    from digitrec.nets.augment import to_float

    theta, tx, ty, zx, zy = (torch.tensor(c) for c in keras_params.T)
    angle = torch.deg2rad(theta)
    params = {"angle_deg": theta, "zoom_x": zx, "zoom_y": zy,
              "shift_x": (torch.cos(angle) * tx - torch.sin(angle) * ty) / 28,
              "shift_y": (torch.sin(angle) * tx + torch.cos(angle) * ty) / 28}
    params = {k: v.to(torch.float32) for k, v in params.items()}
    original = augment.sample_affine_params
    augment.sample_affine_params = lambda n, cfg, generator: params
    try:
        out = augment.random_affine(to_float(np.round(images * 255).astype(np.uint8)), cfg, torch.Generator())
    finally:
        augment.sample_affine_params = original
    return out.squeeze(1).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--keras-venv", type=Path, default=ROOT / ".venv-keras")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "keras-equivalence")
    parser.add_argument("--keras-side", type=Path, help=argparse.SUPPRESS)  # internal: the Keras half
    args = parser.parse_args()
    if args.keras_side:
        keras_side(args.keras_side)
        return 0

    import torch

    from digitrec.core.config import make_config
    from digitrec.core.data import load_mnist
    from digitrec.nets.model import build_model

    cfg = make_config("seed")
    assert (cfg.lr, cfg.rho, cfg.eps, cfg.batch_size, cfg.optimizer) == (LR, RHO, EPS, BATCH, "rmsprop")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train = load_mnist("train")
    order = np.random.default_rng(0).permutation(len(train))[:args.steps * BATCH]
    x = (train.images[order] / 255.0).astype(np.float32).reshape(args.steps, BATCH, 28, 28)
    y = train.labels[order].reshape(args.steps, BATCH)
    np.savez(work / "batches.npz", x=x, y=y)
    np.save(work / "augment_in.npy", (train.images[:AUGMENT_IMAGES] / 255.0).astype(np.float32))

    python = keras_venv(args.keras_venv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"KERAS_BACKEND": "tensorflow",
                                                                        "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([str(python), __file__, "--keras-side", str(work)], check=True, env=env)

    def weights(name):
        with np.load(work / name) as z:
            return [z[f"arr_{k}"] for k in range(len(z.files))]

    model = build_model(cfg)
    model.load_state_dict(to_torch_state(weights("keras_initial.npz"), model))
    model64 = build_model(cfg).double()
    model64.load_state_dict({k: v.double() for k, v in to_torch_state(weights("keras_initial.npz"), model).items()})
    losses = train_steps(model, x, y, cfg)
    losses64 = train_steps(model64, x, y, cfg, torch.float64)
    keras_losses = np.load(work / "keras_losses.npy")

    print(f"\n1. {args.steps} RMSprop steps of batch {BATCH}, lr {LR}, dropout and augmentation off, "
          "the same initial weights. Keras 3's RMSprop, and Keras with the reference's (2017) RMSprop rule")
    keras3, keras2017 = (np.load(work / f"{rule}_losses.npy") for rule in ("keras3", "keras2017"))
    print("The last column is float32 rounding alone, amplified by training: digitrec in float64 minus float32.")
    print("step   keras 3 loss   keras, 2017 rule   digitrec loss   digitrec - 2017 rule   float64 - float32")
    for step, (a, b, c, d) in enumerate(zip(keras3, keras2017, losses, losses64), 1):
        print(f"{step:>4}   {a:.7f}      {b:.7f}          {c:.7f}       {c - b:+.2e}              {d - c:+.2e}")
    drift = max((p64.double() - p).abs().max().item() for p64, p in zip(model64.state_dict().values(),
                                                                         model.state_dict().values()))
    print(f"digitrec float64 vs float32: largest weight difference after {args.steps} steps {drift:.2e}, "
          f"largest loss difference {np.abs(np.array(losses64) - losses).max():.2e}")
    for rule, label in (("keras2017", "Keras with the 2017 RMSprop rule"), ("keras3", "Keras 3's RMSprop")):
        final = to_torch_state(weights(f"{rule}_final.npz"), model)
        diffs = {k: (model.state_dict()[k] - v).abs().max().item() for k, v in final.items()}
        scale = max(v.abs().max().item() for v in final.values())
        worst = max(diffs, key=diffs.get)
        rule_losses = keras2017 if rule == "keras2017" else keras3
        print(f"digitrec vs {label}: largest weight difference after {args.steps} steps {diffs[worst]:.2e} "
              f"({worst}; largest weight {scale:.3f}), largest loss difference "
              f"{np.abs(rule_losses - losses).max():.2e}")

    probe = float(np.load(work / "keras_rmsprop_probe.npy")[0])
    g, eps = 1e-2, 1e-2
    v = (1 - RHO) * g * g
    outside, inside = -g / (np.sqrt(v) + eps), -g / np.sqrt(v + eps)
    which = "outside the square root (as PyTorch and Keras 2.0-2.2)" if abs(probe - outside) < abs(probe - inside) \
        else "inside the square root (PyTorch and the Keras of 2017 add it outside)"
    print(f"\n3. RMSprop's epsilon: Keras's step {probe:.6f}; epsilon outside the root gives {outside:.6f}, "
          f"inside {inside:.6f}: this Keras adds it {which}")

    images = np.load(work / "augment_in.npy")
    ours = digitrec_augment(images, np.load(work / "keras_augment_params.npy"), cfg)
    theirs = np.load(work / "keras_augment_out.npy")
    diff = np.abs(ours - theirs)
    print(f"\n2. augmentation, {len(images)} images with Keras's drawn parameters: largest pixel difference "
          f"{diff.max():.2e} (pixels 0..1), mean {diff.mean():.2e}; {int((diff > 1e-3).sum())} pixels differ by more than 1e-3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
