"""The one place that knows the distillation methods' names.

A feature method is one module with a `FeatureMethod` subclass plus one entry in `REGISTRY` (or a `register` call);
every `distill=` choice, loss column, help line and balancing key elsewhere is derived from here, when it is asked.
"""

from __future__ import annotations

from ds2d2_yolo.methods.base import FeatureMethod
from ds2d2_yolo.methods.cwd import CWD
from ds2d2_yolo.methods.ds2d2 import DS2D2
from ds2d2_yolo.methods.mgd import MGD

REGISTRY: dict[str, FeatureMethod] = {m.name: m for m in (DS2D2(), CWD(), MGD())}
# Methods that are not feature distillation: Ultralytics' own distillation, and training without a teacher.
OTHER_METHODS = {
    "native": "Ultralytics' own distillation (distill_model=), on the same teacher",
    "pseudo": "ground truth plus the teacher's detections with confidence >= pseudo_conf (a transfer reference)",
    "none": "no distillation: the student alone, as a plain Ultralytics run",
}


def register(method: FeatureMethod) -> FeatureMethod:
    """Add a feature method under its `name` (refusing a name that is taken) and return it."""
    if not method.name or method.name in REGISTRY or method.name in OTHER_METHODS:
        raise ValueError(f"method name '{method.name}' is empty or already registered")
    REGISTRY[method.name] = method
    return method


def feature_methods() -> tuple[str, ...]:
    """The `distill=` values that distil through the wrapper's hooks and adapters."""
    return tuple(REGISTRY)


def distill_methods() -> tuple[str, ...]:
    """Every `distill=` value."""
    return (*REGISTRY, *OTHER_METHODS)


def term_weights() -> dict[str, str]:
    """Logged term -> the DS2D2 key of its loss weight, over every feature method."""
    return {t: k for m in REGISTRY.values() for t, k in m.weights.items()}


def method_help() -> dict[str, str]:
    """`distill=` value -> one line of help, for every method."""
    return {**{n: m.help for n, m in REGISTRY.items()}, **OTHER_METHODS}


__all__ = [
    "OTHER_METHODS",
    "REGISTRY",
    "FeatureMethod",
    "distill_methods",
    "feature_methods",
    "method_help",
    "register",
    "term_weights",
]
