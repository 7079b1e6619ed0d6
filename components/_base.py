"""What every genexflow KFP component shares: the project base image and the decorator.

All components run in ONE image built from ``infra/docker`` (genexflow and its pinned dependencies are
installed there, so ``install_kfp_package=False`` and no per-step pip installs). The image name is read
from the environment when the components module is imported (i.e. at compile time):

* ``GENEXFLOW_BASE_IMAGE`` - CPU image for every step (default ``ghcr.io/genexflow/genexflow:<version>-cpu``)
* ``GENEXFLOW_GPU_IMAGE`` - CUDA image used for the training step when a pipeline is compiled for a
  cluster with GPUs (default ``ghcr.io/genexflow/genexflow:<version>-cuda``)

:func:`genexflow.pipelines.compile.compile_pipeline` can also rewrite the images of an already-built
pipeline, so a checked-in spec and a custom registry do not require re-importing anything.
"""

from __future__ import annotations

import functools
import os

from kfp import dsl

from genexflow import images

# The names come from genexflow.images, the one place that `make images` tags with.
IMAGE_REPOSITORY = images.COMPONENT_REPOSITORY
DEFAULT_BASE_IMAGE = images.COMPONENT_CPU
DEFAULT_GPU_IMAGE = images.COMPONENT_CUDA

BASE_IMAGE = os.environ.get("GENEXFLOW_BASE_IMAGE", DEFAULT_BASE_IMAGE)
GPU_IMAGE = os.environ.get("GENEXFLOW_GPU_IMAGE", DEFAULT_GPU_IMAGE)

#: ``@component`` is ``@dsl.component`` with the project image and no runtime pip install of kfp.
component = functools.partial(dsl.component, base_image=BASE_IMAGE, install_kfp_package=False)
