"""Built-in plugin ee_tta: test-time augmentation views and streaming prediction.

Views (``register_tta_views``): ``identity``, ``hflip``, ``rotate``, ``color_jitter`` and
``gauss_noise``; see ``views`` for what each does and how it is seeded. ``predict_split`` and
``predict_sizes`` run a model over store splits at test sizes × views and stream the merged
scores (``merge``: mean_logits, mean_probs, gmean) into the prediction store.
"""

from __future__ import annotations

from ensemble_engine import Register, hookimpl, lazy_exports

# Everything below is imported on first use (module-level __getattr__): loading the plugin to
# list commands or read a store must not import torch and timm.
_EXPORTS = {
    "EvalConfig": "evaldata",
    "check_test_size": "evaldata",
    "eval_config": "evaldata",
    "DEFAULT_MERGE": "merge",
    "MERGE_KINDS": "merge",
    "merge_kind": "merge",
    "merge_views": "merge",
    "forward_views": "predict",
    "predict_sizes": "predict",
    "predict_split": "predict",
    "view_prediction_name": "predict",
    "ColorJitter": "views",
    "GaussNoise": "views",
    "HFlip": "views",
    "Identity": "views",
    "Rotate": "views",
    "build_views": "views",
    "view_generator": "views",
    "view_label": "views",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def register_tta_views(register: Register) -> None:
    register(
        "identity",
        "ee_tta.views:Identity",
        description="the image as it is",
        aliases=("none",),
        random=False,
    )
    register(
        "hflip",
        "ee_tta.views:HFlip",
        description="mirror left-right",
        aliases=("flip",),
        random=False,
    )
    register(
        "rotate",
        "ee_tta.views:Rotate",
        description="rotate each image by U(-degrees, degrees), default 10, mean-colour fill",
        random=True,
    )
    register(
        "color_jitter",
        "ee_tta.views:ColorJitter",
        description="per-image brightness/contrast/saturation (default ±0.2) and hue jitter",
        aliases=("jitter",),
        random=True,
    )
    register(
        "gauss_noise",
        "ee_tta.views:GaussNoise",
        description="Gaussian pixel noise, sigma on the 0-255 scale (default 20, one field "
        "for all channels: the seed's; mode=per_channel for one per channel)",
        aliases=("noise",),
        random=True,
    )
