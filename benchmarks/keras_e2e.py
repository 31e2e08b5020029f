"""The notebook's whole prediction job in Keras, for `benchmarks/archive.py` (run in .venv-keras).

    python keras_e2e.py save MODEL.h5          # the notebook's model with random weights (untimed set-up)
    python keras_e2e.py predict MODEL.h5 DIR   # load the .h5, predict every image under DIR/*/ as the
                                               # notebook did (flow_from_directory, rescale 1/255, 600x360)

The caller times the whole `predict` process (imports, model load, decoding, inference), as a user
waits for it; this script prints the number of images it scored as one JSON line.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

H, W = 600, 360


def save(path):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.applications.InceptionResNetV2(weights=None, include_top=False,
                                                                   input_shape=(H, W, 3)),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1024, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(path, save_format="h5")


def predict(path, folder):
    import tf_keras as keras
    from tf_keras.preprocessing.image import ImageDataGenerator

    try:  # tf-keras' Inception-ResNet-v2 scales residuals with a layer of its own (Keras 2.1.5: a Lambda)
        from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer
        custom = {"CustomScaleLayer": CustomScaleLayer}
    except ImportError:
        custom = {}
    model = keras.models.load_model(path, custom_objects=custom)
    gen = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        folder, target_size=(H, W), batch_size=12, class_mode="binary", shuffle=False, interpolation="nearest")
    p = model.predict(gen, verbose=0)
    print(json.dumps({"images": int(len(p))}), flush=True)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    save(*rest) if cmd == "save" else predict(*rest)
