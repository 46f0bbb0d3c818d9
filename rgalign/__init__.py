"""rgalign: RGAlign-Rec (ranking-guided alignment for latent query reasoning), trained, exported
and served.

See README.md for the two commands and SPEC.md (shared) for the product contract.
"""

__version__ = "0.1.0"
