"""Run in the test-only Keras venv (tests/keras/make_env.sh): build the notebook's model with random
weights and random BN statistics, save it as .h5, and save Keras' probabilities on fixed inputs.

    .venv-keras/bin/python tests/keras/make_models.py OUT_DIR

Writes OUT_DIR/inputs.npy (N, H, W, 3) float32 in [0, 1], OUT_DIR/files/*.png (gray scans larger
than the input, for the file-level check), and per case CASE.h5, CASE.npy (P on inputs.npy) and
CASE_files.npy (P on the PNGs read as the notebook's flow_from_directory did: RGB, nearest, /255),
plus cases.json describing each case.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

_threads = int(os.environ.get("VFA_TF_THREADS", "1"))  # pytest-xdist shares the cores
tf.config.threading.set_intra_op_parallelism_threads(_threads)
tf.config.threading.set_inter_op_parallelism_threads(_threads)
import tf_keras as keras  # noqa: E402
from PIL import Image  # noqa: E402

H, W = 107, 75  # small and non-square (Inception-ResNet-v2 needs >= 75): catches H/W mix-ups
N_FILES = 8  # PNGs for the file-level check (issue 29's case: default `vfa predict` on 8 PNGs)
# name: (head, save format, number of throw-away layers created first: offsets conv2d_N like an
# earlier model in the session; 1 gives Keras 2.1.5's conv2d_1.. naming, 0 tf-keras' conv2d, conv2d_1..)
CASES = {
    "plain_model": ("plain", "model", 0),
    "plain_weights": ("plain", "weights", 1),
    "bn_model": ("bn", "model", 1),
    "bn_weights": ("bn", "weights", 7),
    "bnafter_model": ("bn_after_relu", "model", 0),
}


def build(head: str, offset: int, seed: int):
    keras.backend.clear_session()  # name counters restart: conv2d, conv2d_1, ...
    for _ in range(offset):  # an earlier model in the same session shifts every auto-generated name
        keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization(), keras.layers.Dense(1)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential()  # as the notebook: the nested base model, then GAP and the head
    base = keras.applications.InceptionResNetV2(weights=None, include_top=False, input_shape=(None, None, 3))
    model.add(base)
    model.add(keras.layers.GlobalAveragePooling2D())
    if head == "plain":
        model.add(keras.layers.Dense(1024, activation="relu"))
    elif head == "bn":
        model.add(keras.layers.Dense(1024))
        model.add(keras.layers.BatchNormalization())
        model.add(keras.layers.Activation("relu"))
    else:
        model.add(keras.layers.Dense(1024, activation="relu"))
        model.add(keras.layers.BatchNormalization())
    model.add(keras.layers.Dense(1, activation="sigmoid"))
    model.build((None, H, W, 3))
    rng = np.random.default_rng(seed)
    layers = [*base.layers, *model.layers[1:]]
    for layer in layers:  # random biases (Keras initialises them to zero)
        if layer.weights and isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            k, *b = layer.get_weights()
            layer.set_weights([k, *[rng.normal(0, 0.05, x.shape).astype("float32") for x in b]])
    # A glorot-initialised Inception-ResNet-v2 with BN statistics unrelated to its activations
    # gives features that hardly depend on the input (the comparison would then only test noise).
    # So first set every moving mean/variance to the batch statistics of one training-mode pass
    # (momentum 0), then perturb them and beta/gamma randomly: "random BN statistics" of a net
    # whose outputs still depend on its input.
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(rng.random((8, H, W, 3), dtype=np.float32), training=True)
    for layer in bns:
        layer.momentum = 0.99
        var = layer.moving_variance.numpy()
        n = var.shape[0]
        new = {"gamma": rng.uniform(0.7, 1.3, n), "beta": rng.normal(0, 0.1, n),
               "moving_mean": layer.moving_mean.numpy() + rng.normal(0, 0.1, n) * np.sqrt(var),
               "moving_variance": var * rng.uniform(0.7, 1.4, n)}
        layer.set_weights([new[w.name.split("/")[-1].split(":")[0]].astype("float32") for w in layer.weights])
    return model


def spread_logits(model, x):
    """Rescale the last Dense so that the logits on x are spread around 0 (std ~2): probabilities
    that are neither saturated nor all alike make the comparison meaningful."""
    last = model.layers[-1]
    feats = keras.Model(model.inputs, model.layers[-2].output)(x).numpy().astype("float64")
    k, _ = last.get_weights()
    z = feats @ k[:, 0]
    scale = 2.0 / max(z.std(), 1e-6)
    last.set_weights([(k * scale).astype("float32"), np.array([-z.mean() * scale], "float32")])
    return scale


def read_like_notebook(paths):
    """flow_from_directory: load_img(color_mode='rgb', target_size, interpolation='nearest'), then /255."""
    arrs = [keras.utils.img_to_array(keras.utils.load_img(p, color_mode="rgb", target_size=(H, W),
                                                           interpolation="nearest")) for p in paths]
    return np.stack(arrs).astype("float32") * np.float32(1.0 / 255)


def main(out):
    os.makedirs(os.path.join(out, "files"), exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.random((4, H, W, 3), dtype=np.float32)
    x[1] = x[1].mean(-1, keepdims=True)  # one gray input, as DXA scans are
    np.save(os.path.join(out, "inputs.npy"), x)
    paths = []
    for i in range(N_FILES):  # gray scans larger than the input: the resize is part of the check
        img = (rng.random((H * 3 + i, W * 2 + 5)) * 255).astype("uint8")
        paths.append(os.path.join(out, "files", f"scan_{i}.png"))
        Image.fromarray(img).save(paths[-1])
    files_x = read_like_notebook(paths)
    info = {"size": [H, W], "files": [os.path.basename(p) for p in paths], "tf": tf.__version__,
            "keras": keras.__version__, "cases": {}}
    for i, (case, (head, fmt, offset)) in enumerate(CASES.items()):
        model = build(head, offset, seed=10 + i)
        scale = spread_logits(model, x)
        p = model(x, training=False).numpy()[:, 0]
        pf = model(files_x, training=False).numpy()[:, 0]
        path = os.path.join(out, case + ".h5")
        if fmt == "model":
            model.save(path, save_format="h5")
        else:
            model.save_weights(path, save_format="h5")
        np.save(os.path.join(out, case + ".npy"), p)
        np.save(os.path.join(out, case + "_files.npy"), pf)
        names = [w.name for w in model.layers[0].weights]
        info["cases"][case] = {"head": head, "format": fmt, "offset": offset, "first_weight": names[0],
                               "logit_scale": scale, "probs": p.tolist()}
        print(case, names[0], f"scale {scale:.3g}", np.round(p, 4).tolist(), flush=True)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
