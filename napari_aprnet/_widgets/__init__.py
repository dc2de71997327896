"""napari dock widgets of the plugin: the only package that imports napari, qtpy or magicgui.

Each widget wraps GUI-independent core functions (``napari_aprnet.apr``,
``sweep``, ``annotations``, ``train``, ``classify``); long steps run in
napari ``thread_worker`` generators (see :mod:`._common`).
"""
