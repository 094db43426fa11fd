"""The shipped reference checkpoints and their model cards, installed as the package ``deploy_unet.models``.

This folder is package data (pyproject.toml maps ``deploy_unet.models`` to ``models/``); read it through
``deploy_unet.shipped``, never through a path relative to the source tree. ``train.py`` made the checkpoints.
"""
