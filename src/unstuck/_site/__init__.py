"""The folder ``unstuck run`` puts first on ``PYTHONPATH``: its ``sitecustomize`` watches every
Python process the command starts (``torchrun`` workers too), as OpenTelemetry's does."""
