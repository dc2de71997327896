"""Build hook: compiles native/*.c into napari_aprnet._aprnet_cffi (cffi API mode)."""
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
