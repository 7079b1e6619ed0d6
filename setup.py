"""Map the top-level layout folders into the ``genexflow`` import package.

``cli/``, ``components/``, ``pipelines/``, ``serving/`` and ``monitoring/`` live at the repository top level (see
DESIGN.md) but install as ``genexflow.components`` etc., so they work from a wheel, not only a checkout.
"""

from setuptools import find_packages, setup

MAPPED = ("cli", "components", "pipelines", "serving", "monitoring")

package_dir = {"genexflow": "src/genexflow"}
packages = find_packages("src")
for top in MAPPED:
    package_dir[f"genexflow.{top}"] = top
    packages.append(f"genexflow.{top}")
    for sub in find_packages(top):
        packages.append(f"genexflow.{top}.{sub}")
        package_dir[f"genexflow.{top}.{sub}"] = f"{top}/{sub.replace('.', '/')}"

setup(package_dir=package_dir, packages=packages)
