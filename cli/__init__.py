"""The ``genexflow`` command line. One module per command group; each defines ``register(app)``.

Modules are discovered automatically (every ``genexflow.cli.<name>`` with a ``register`` function), so a
new command group is one new file. Keep heavy imports (torch, mlflow, kfp) inside the command bodies so
``genexflow --help`` stays fast.
"""
