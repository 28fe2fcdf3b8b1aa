"""Model families behind one protocol (see ``models.family``). Imports torch only."""

from models.family import ModelFamily, ParamCount, family_names, get_family, register

__all__ = ["ModelFamily", "ParamCount", "family_names", "get_family", "register"]
