"""Model families behind one protocol (see ``models.family``). Imports torch (and the results
contract, ``analysis.records``) only."""

from models.family import DataShape, ModelFamily, ParamCount, family_module, family_names, get_family, register

__all__ = ["DataShape", "ModelFamily", "ParamCount", "family_module", "family_names", "get_family", "register"]
