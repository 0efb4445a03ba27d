# install.mk - `make install`: the executable, the library, the public header, a
# pkg-config file and the Python package into $(PREFIX) (default ~/.local).
# Included by the Makefile (or: make -f Makefile -f mk/install.mk install).
#   make install PREFIX=/opt/vllm-metal [DESTDIR=/pkgroot] [PYTHON=python3]
ifndef VM_INSTALL_MK
VM_INSTALL_MK := 1

PREFIX ?= $(HOME)/.local
DESTDIR ?=
PYTHON ?= python3
VM_VERSION := $(shell sed -n 's/^\#define VLLM_METAL_VERSION_STRING "\(.*\)"/\1/p' include/vllm_metal.h)
# <prefix>/lib/pythonX.Y/site-packages (posix_prefix: also right for ~/.local)
PY_SITE = $(shell $(PYTHON) -c 'import sysconfig,sys; print(sysconfig.get_path("purelib", "posix_prefix", vars={"base": sys.argv[1], "platbase": sys.argv[1]}))' "$(PREFIX)" 2>/dev/null)
# (expanded in the recipe: mk/blas.mk and mk/vulkan.mk, read later, say whether the build uses openblas and vulkan)
PC_REQUIRES = $(shell for p in jansson libpcre2-8 libmicrohttpd libcurl; do pkg-config --exists $$p 2>/dev/null && printf '%s ' $$p; done)$(if $(filter 1,$(BLAS_OK)),openblas )$(if $(filter 1,$(VK_OK)),vulkan)

install: $(BUILD)/vllm-metal $(BUILD)/libvllm_metal.so $(BUILD)/libvllm_metal.a
	@test -n "$(PY_SITE)" || { echo "install: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(PREFIX)/lib/pkgconfig" \
	    "$(DESTDIR)$(PREFIX)/include" "$(DESTDIR)$(PY_SITE)/vllm_metal"
	install -m 755 $(BUILD)/vllm-metal "$(DESTDIR)$(PREFIX)/bin/vllm-metal"
	install -m 755 $(BUILD)/libvllm_metal.so "$(DESTDIR)$(PREFIX)/lib/libvllm_metal.so"
	install -m 644 $(BUILD)/libvllm_metal.a "$(DESTDIR)$(PREFIX)/lib/libvllm_metal.a"
	install -m 644 include/vllm_metal.h "$(DESTDIR)$(PREFIX)/include/vllm_metal.h"
	printf '%s\n' 'prefix=$(PREFIX)' 'exec_prefix=$${prefix}' 'libdir=$${exec_prefix}/lib' \
	    'includedir=$${prefix}/include' '' 'Name: vllm-metal' \
	    "Description: vLLM's serving engine in C (OpenAI server, paged KV cache, continuous batching)" \
	    'Version: $(VM_VERSION)' 'Requires.private: $(PC_REQUIRES)' \
	    'Libs: -L$${libdir} -lvllm_metal' 'Libs.private: -lutf8proc -lm -pthread' \
	    'Cflags: -I$${includedir}' > "$(DESTDIR)$(PREFIX)/lib/pkgconfig/vllm-metal.pc"
	install -m 644 python/vllm_metal/*.py "$(DESTDIR)$(PY_SITE)/vllm_metal/"
	printf '# written by make install\nPREFIX = %s\n' "'$(PREFIX)'" > "$(DESTDIR)$(PY_SITE)/vllm_metal/_prefix.py"
	@echo "installed vllm-metal $(VM_VERSION) into $(DESTDIR)$(PREFIX) (Python package: $(DESTDIR)$(PY_SITE)/vllm_metal)"

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/bin/vllm-metal" "$(DESTDIR)$(PREFIX)/lib/libvllm_metal.so" \
	    "$(DESTDIR)$(PREFIX)/lib/libvllm_metal.a" "$(DESTDIR)$(PREFIX)/include/vllm_metal.h" \
	    "$(DESTDIR)$(PREFIX)/lib/pkgconfig/vllm-metal.pc"
	rm -rf "$(DESTDIR)$(PY_SITE)/vllm_metal"

.PHONY: install uninstall
endif
