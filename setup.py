"""Build pyxlb: the BPF objects (clang -target bpf) and the Cython modules (against libbpf).

Everything the build needs from the system is checked first, so a missing piece is one
clear line ("pyxlb build: clang not found ...") instead of a compiler traceback.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
XDP_DIR = os.path.join("xdp")
XDP_INCLUDE = os.path.join(XDP_DIR, "include")
BPF_OUT = os.path.join("pyxlb", "bpf")
MISSING_HINT = "run `make setup` (or apt-get install clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config)"


def fail(message):
    sys.stderr.write(f"pyxlb build: {message}\n")
    raise SystemExit(1)


def multiarch_include():
    """Debian keeps asm/types.h under /usr/include/<multiarch>; clang -target bpf needs it."""
    for cmd in (["gcc", "-print-multiarch"], ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
        if out and os.path.isdir(os.path.join("/usr/include", out)):
            return os.path.join("/usr/include", out)
    return None


def libbpf_flags():
    """Compiler and linker flags for the system libbpf, from pkg-config when it knows it."""
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", "libbpf"], capture_output=True,
                                text=True, check=True).stdout.split()
        libs = subprocess.run(["pkg-config", "--libs", "libbpf"], capture_output=True,
                              text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        cflags, libs = [], ["-lbpf"]
    include_dirs = [f[2:] for f in cflags if f.startswith("-I")]
    header_dirs = include_dirs + ["/usr/include", "/usr/local/include"]
    if not any(os.path.exists(os.path.join(d, "bpf", "libbpf.h")) for d in header_dirs):
        fail(f"libbpf headers (bpf/libbpf.h) not found: install libbpf-dev; {MISSING_HINT}")
    return include_dirs, [f[2:] for f in libs if f.startswith("-l")] or ["bpf"]


def preflight():
    if sys.version_info < (3, 10):
        fail("Python >= 3.10 is required")
    if shutil.which("clang") is None:
        fail(f"clang not found (it compiles xdp/*.bpf.c for the BPF target); {MISSING_HINT}")
    try:
        import Cython  # noqa: F401
    except ImportError:
        fail("Cython not found: pip install 'Cython>=3.0' (pip install . fetches it itself)")


# test-only builds of an object with other settings, name -> (source, extra clang flags):
# the upgrade tests upgrade to and from a balancer whose flow layout differs, and one whose
# program alone differs; the chaining tests load a decapsulator as on a kernel without the
# conntrack kfuncs
TEST_VARIANTS = {
    "test_variant_balancer": ("balancer.bpf.c", ["-DXLB_TEST_LAYOUT_VARIANT"]),
    "test_program_balancer": ("balancer.bpf.c", ["-DXLB_TEST_PROGRAM_VARIANT"]),
    "test_noct_decap": ("decap.bpf.c", ["-DXLB_TEST_NO_CONNTRACK"]),
}


class BuildExt(build_ext):
    """build_ext that first compiles every xdp/*.bpf.c into pyxlb/bpf/*.o (and the
    benchmark-only xdp/bench/*.bpf.c into pyxlb/bpf/bench_*.o, TEST_VARIANTS into
    pyxlb/bpf/test_*.o; neither is shipped)."""

    def run(self):
        self.build_bpf()
        super().run()

    def build_bpf(self):
        sources = sorted(glob.glob(os.path.join(XDP_DIR, "*.bpf.c")))
        # benchmark-only objects (bench/datapath.py): xdp/bench/NAME.bpf.c -> bench_NAME.o
        bench_sources = sorted(glob.glob(os.path.join(XDP_DIR, "bench", "*.bpf.c")))
        headers = glob.glob(os.path.join(XDP_INCLUDE, "*.h"))
        flags = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I", XDP_INCLUDE]
        arch_inc = multiarch_include()
        if arch_inc:
            flags += ["-I", arch_inc]
        os.makedirs(BPF_OUT, exist_ok=True)
        targets = []
        builds = []
        for src in sources + bench_sources:
            prefix = "bench_" if src in bench_sources else ""
            builds.append((src, prefix + os.path.basename(src)[: -len(".bpf.c")], []))
        builds += [(os.path.join(XDP_DIR, src), name, extra)
                   for name, (src, extra) in TEST_VARIANTS.items()]
        for src, name, extra in builds:
            obj = os.path.join(BPF_OUT, name + ".o")
            targets.append(obj)
            newest_input = max(os.path.getmtime(p) for p in [src, *headers])
            if os.path.exists(obj) and os.path.getmtime(obj) >= newest_input and not self.force:
                continue
            cmd = ["clang", *flags, *extra, "-c", src, "-o", obj]
            print(" ".join(cmd))
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                sys.stderr.write(result.stderr)
                fail(f"clang failed to compile {src} (compiler output above)")
        if not self.inplace:
            # build_py collected package data before these objects existed: copy them now.
            dest = os.path.join(self.build_lib, BPF_OUT)
            os.makedirs(dest, exist_ok=True)
            for obj in targets:
                if not os.path.basename(obj).startswith(("bench_", "test_")):  # not shipped
                    shutil.copy2(obj, dest)


def extensions():
    include_dirs, libraries = libbpf_flags()
    common = dict(include_dirs=[XDP_INCLUDE, "ext", *include_dirs],
                  extra_compile_args=["-O3", "-Wno-unused-function"])
    from Cython.Build import cythonize

    exts = [
        Extension("pyxlb._bpf", ["ext/bpf.pyx"], libraries=libraries, **common),
        Extension("pyxlb._maglev", ["ext/maglev.pyx"], **common),
        Extension("pyxlb._layouts", ["ext/layouts.pyx"], **common),
    ]
    return cythonize(exts, language_level=3, include_path=["ext"],
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "embedsignature": True})


needs_build = not any(arg in sys.argv for arg in ("egg_info", "dist_info", "sdist", "--version", "clean"))
if needs_build:
    preflight()
setup(ext_modules=extensions() if needs_build else [], cmdclass={"build_ext": BuildExt})
