"""Only what pyproject.toml cannot say: the cffi-compiled virtqueue path (core/native/build.py)."""

from setuptools import setup

setup(cffi_modules=["core/native/build.py:ffibuilder"])
