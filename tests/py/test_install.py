"""install.sh into a temporary prefix, twice in a row (idempotent), reusing the
build folder `make test` already built (BUILD, from VLLM_METAL_BIN), then the
installed command, Python package, header and pkg-config file are used."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("VLLM_METAL_BIN", os.path.join(ROOT, "build", "vllm-metal"))
BUILD = os.path.dirname(os.path.abspath(BIN))

pytestmark = pytest.mark.skipif(not os.path.exists(BIN), reason="build the tree first (make)")


def site_dir(prefix):
    return subprocess.check_output(
        [sys.executable, "-c", 'import sysconfig,sys; print(sysconfig.get_path("purelib", "posix_prefix", '
         'vars={"base": sys.argv[1], "platbase": sys.argv[1]}))', str(prefix)], text=True).strip()


def test_install_twice_then_use(tmp_path):
    prefix = tmp_path / "prefix"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("VLLM_METAL_LIB", None)
    for run in range(2):
        out = subprocess.run([os.path.join(ROOT, "install.sh"), "--prefix", str(prefix), "--build-dir", BUILD],
                             cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"run {run}: {out.stdout}\n{out.stderr}"
        assert "installed" in out.stdout and "vllm-metal --model" in out.stdout
    for f in ("bin/vllm-metal", "lib/libvllm_metal.so", "lib/libvllm_metal.a", "include/vllm_metal.h",
              "lib/pkgconfig/vllm-metal.pc"):
        assert (prefix / f).exists(), f
    v = subprocess.run([str(prefix / "bin" / "vllm-metal"), "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("vllm-metal ")

    # the Python package from the prefix's site dir finds the prefix's library (no VLLM_METAL_LIB)
    site = site_dir(prefix)
    py = subprocess.run([sys.executable, "-c", "import vllm_metal, sys; "
                         "print(vllm_metal.library_path()); print(vllm_metal.lib_version()); "
                         "from vllm_metal.model_runner import MetalModelRunner"],
                        env=dict(env, PYTHONPATH=site), cwd=str(tmp_path), capture_output=True, text=True)
    assert py.returncode == 0, py.stderr
    lib_path, version = py.stdout.split()
    assert lib_path == str(prefix / "lib" / "libvllm_metal.so")
    assert v.stdout.split()[1] == version

    # pkg-config + the header: a C program against the installed library
    pc_env = dict(env, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = subprocess.check_output(["pkg-config", "--cflags", "--libs", "vllm-metal"], env=pc_env, text=True)
    src = tmp_path / "app.c"
    src.write_text('#include <vllm_metal.h>\n#include <stdio.h>\n'
                   'int main(void) { vllm_metal_engine *e = vllm_metal_engine_create("{}");\n'
                   '  printf("%s|%s\\n", vllm_metal_version(), e ? "?" : vllm_metal_last_error()); return 0; }\n')
    cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "app"), str(src)]
                        + flags.split(), capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run([str(tmp_path / "app")], env=dict(env, LD_LIBRARY_PATH=str(prefix / "lib")),
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == version + '|engine args: "model" is required'
