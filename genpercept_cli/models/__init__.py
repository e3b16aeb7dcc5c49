"""Model families and the DenseModel interface; importing this package registers the built-in families.

    from genpercept_cli.models import build_model, register_family, DenseModel, Family
"""

from . import exported, metaprompts  # noqa: F401  (register their families)
from .base import FAMILIES, OUTPUT_KINDS, DenseModel, Family, build_model, family_of, register_family
from .one_step import OneStepModel, OneStepParams

__all__ = ["FAMILIES", "OUTPUT_KINDS", "DenseModel", "Family", "OneStepModel",
           "OneStepParams", "build_model", "family_of", "register_family"]
