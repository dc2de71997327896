"""cffi API-mode builder for the native APR library.

The cdef is read from ``aprnet.h`` (preprocessor lines removed), and every
C source under ``native/`` (``common.c``, ``cell_table.c`` and the part folders
``formation/``, ``reconstruct/``, ``labels/``, ``nn/``) is compiled with
``-O3 -fopenmp``. Set
``APRNET_SANITIZE=address`` to build with AddressSanitizer.
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "aprnet.h")


def _cdef_source(header_text: str) -> str:
    """Return the header without preprocessor directives other than integer #defines."""
    keep = []
    for line in header_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.match(r"#define\s+APRNET_[A-Z0-9_]+\s+-?\d+\s*$", stripped):
                keep.append(stripped)
            continue
        keep.append(line)
    return "\n".join(keep)


with open(HEADER) as fh:
    _header = fh.read()

extra_compile = ["-O3", "-fopenmp", "-std=c11", "-Wall", "-Wno-unused-function"]
extra_link = ["-fopenmp"]
if os.environ.get("APRNET_SANITIZE") == "address":
    extra_compile = ["-O1", "-g", "-fopenmp", "-std=c11", "-fsanitize=address", "-fno-omit-frame-pointer"]
    extra_link = ["-fopenmp", "-fsanitize=address"]

sources = sorted(glob.glob(os.path.join(HERE, "**", "*.c"), recursive=True))
# setuptools wants paths relative to the project root
root = os.path.dirname(HERE)
sources = [os.path.relpath(s, root) for s in sources]

ffibuilder = FFI()
ffibuilder.cdef(_cdef_source(_header))
ffibuilder.set_source(
    "napari_aprnet._aprnet_cffi",
    '#include "aprnet.h"',
    sources=sources,
    include_dirs=[os.path.relpath(HERE, root), os.path.relpath(os.path.join(HERE, "formation"), root)],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
