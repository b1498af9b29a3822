"""Architecture registry: ``create_model(name, num_classes, ...)`` and ``list_models()``.

Every model is a :class:`ClassifierModel`: ``model(x)`` gives logits, ``model.features(x)`` the
penultimate activations (the input of ``model.classifier``, the final ``nn.Linear``) and
``model.forward_with_hidden(x)`` the logits plus a few intermediate block outputs.

Registered names: ``cnn-small`` (fast CPU CNN); torchvision ``resnet18/34/50/101/152``,
``densenet121/169``, ``vgg16_bn``, ``efficientnet_b0``, ``maxvit_t``, ``inception-v1``; and the
model-inversion literature's 64x64 targets ``vgg16``, ``ir152``, ``facenet64``.
Nothing is ever downloaded; pretrained weights come from a local ``weights_path``.

Example:
    >>> from midre.models import create_model
    >>> model = create_model("cnn-small", num_classes=40, image_size=64)
    >>> model.feature_dim
    128
"""

from midre.models import mi_targets, small_cnn, torchvision_models  # noqa: F401  (register the builders)
from midre.models.base import Backbone, ClassifierModel, adapt_input_conv_weight, replace_first_conv
from midre.models.registry import (
    ModelInfo,
    check_input_size,
    create_model,
    get_model_info,
    list_models,
    register_model,
)
from midre.models.weights import LoadReport, load_state_dict_flexible, load_weights, read_state_dict

__all__ = [
    "Backbone",
    "ClassifierModel",
    "check_input_size",
    "LoadReport",
    "ModelInfo",
    "adapt_input_conv_weight",
    "create_model",
    "get_model_info",
    "list_models",
    "load_state_dict_flexible",
    "load_weights",
    "read_state_dict",
    "register_model",
    "replace_first_conv",
]
