"""Networks on the image-formation pipeline (the only jaxface package that imports Flax).

    photo -> crop (landmark box) -> Encoder (Flax NNX) -> raw vector -> FaceDecoder
          -> Prediction (identity, expression, pose, SH light, albedo) -> core pipeline

* :mod:`~jaxface.nets.encoder`: the image encoder and its configuration;
* :mod:`~jaxface.nets.decoder`: raw vector <-> model parameters, and what the core computes
  from them (vertices, landmarks, renders);
* :mod:`~jaxface.nets.losses`: parameter (survey eqs 15-16, vertex-weighted), vertex, landmark,
  photometric and prior losses;
* :mod:`~jaxface.nets.data`: crops, Generate & Render batches, Fit & Render and
  self-supervision datasets;
* :mod:`~jaxface.nets.train`: the training loop (optax, jit, sharding, orbax, JSONL log);
* :mod:`~jaxface.nets.checkpoint`: resumable checkpoints and compact weight exports;
* :mod:`~jaxface.nets.predict`: photo -> fit result, and initialising landmark fits.
"""

from jaxface.nets.checkpoint import CheckpointError, export_weights, load_encoder
from jaxface.nets.data import (
                               CROP_MARGIN,
                               Batch,
                               ImageSet,
                               crop_camera_of,
                               crop_landmarks,
                               crop_to_box,
                               dataset_batch,
                               landmark_box,
                               load_fit_dataset,
                               load_landmark_dataset,
                               synthetic_batch,
                               uncrop_camera,
)
from jaxface.nets.decoder import (
                               FaceDecoder,
                               Prediction,
                               crop_camera,
                               decode,
                               from_vector,
                               make_decoder,
                               prediction_landmarks,
                               prediction_vertices,
                               raw_to_vector,
                               render_prediction,
                               sample_points,
                               to_vector,
)
from jaxface.nets.encoder import Encoder, EncoderConfig, check_images, encoder_config
from jaxface.nets.losses import (
                               coefficient_regularizer,
                               landmark_loss,
                               parameter_loss,
                               photometric_loss,
                               vertex_distance_weights,
                               vertex_loss,
)
from jaxface.nets.train import TrainConfig, TrainResult, load_config, loss_terms, train

__all__ = [
    "CROP_MARGIN", "Batch", "CheckpointError", "Encoder", "EncoderConfig", "FaceDecoder",
    "ImageSet", "Prediction", "TrainConfig", "TrainResult", "check_images",
    "coefficient_regularizer", "crop_camera", "crop_camera_of", "crop_landmarks", "crop_to_box",
    "dataset_batch", "decode", "encoder_config", "export_weights", "from_vector",
    "landmark_box", "landmark_loss", "load_config", "load_encoder", "load_fit_dataset",
    "load_landmark_dataset", "loss_terms", "make_decoder", "parameter_loss", "photometric_loss",
    "prediction_landmarks", "prediction_vertices", "raw_to_vector", "render_prediction",
    "sample_points", "synthetic_batch", "to_vector", "train", "uncrop_camera",
    "vertex_distance_weights", "vertex_loss",
]
