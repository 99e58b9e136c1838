"""jblase: differentiable Voigt-cloned spectral emulation and stellar-parameter inference in JAX.

Pipeline: grid files -> preprocess -> detect -> clone -> line lists -> manifold -> generator
-> inference. Importing jblase turns on JAX's float64 support (``jax_enable_x64``), because
line-centre offsets near 10,000 A need float64; kernels that can run in float32 say so.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from jblase.clone import CloneResult, CloneSettings, clone_batch, clone_spectrum  # noqa: E402
from jblase.generator import Generator  # noqa: E402
from jblase.inference import InferenceResult, infer  # noqa: E402
from jblase.linelist import LineList  # noqa: E402
from jblase.manifold import Manifold, build_manifold  # noqa: E402
from jblase.observe import (  # noqa: E402
    ObservationModel,
    ObservationParameters,
    ObservationSettings,
)

__all__ = [
    "CloneResult",
    "CloneSettings",
    "Generator",
    "InferenceResult",
    "LineList",
    "Manifold",
    "ObservationModel",
    "ObservationParameters",
    "ObservationSettings",
    "__version__",
    "build_manifold",
    "clone_batch",
    "clone_spectrum",
    "infer",
]
