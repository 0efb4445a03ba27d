# mk/blas.mk - OpenBLAS for the CPU backend's large dense matmuls (sgemm for
# prefill steps of more than 64 tokens on f32, f16, bf16 and MLX affine
# weights). Used when pkg-config finds openblas (Debian: libopenblas-dev;
# Homebrew: openblas, keg-only, so install.sh adds its pkgconfig directory);
# otherwise those steps take the kernel sets' own register-blocked tiles.
BLAS_OK := $(shell pkg-config --exists openblas 2>/dev/null && echo 1)
ifeq ($(BLAS_OK),1)
$(BUILD)/src/backend/cpu/cpu_backend.o: CFLAGS += -DVM_HAVE_OPENBLAS $(shell pkg-config --cflags openblas)
LDLIBS += $(shell pkg-config --libs openblas)
endif
