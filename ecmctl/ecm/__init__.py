"""The ECM math, pure numpy: margins and weights (supplementary eq. 10-12, 24-26) and the background ratio.

margins (per-class margins, weights, detection weights) · weights (the weights file) · background (r, its CI).
"""
