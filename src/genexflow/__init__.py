"""genexflow: validated, batch-corrected, pathway-aware deep learning on gene expression, run as MLOps."""

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import GenexflowError, InputError

__version__ = "0.1.0"
__all__ = ["Cohort", "ValueType", "GenexflowError", "InputError", "__version__"]
