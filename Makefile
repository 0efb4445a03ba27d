# vllm-metal build. `make` builds the library and the executable;
# `make run` and `make test` also install what is missing (scripts/setup.sh).
CC ?= cc
BUILD ?= build
CFLAGS ?= -O2 -g
CFLAGS += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fPIC -pthread \
          -Iinclude -Isrc $(shell pkg-config --cflags jansson libpcre2-8 libmicrohttpd libcurl 2>/dev/null)
# x86-64 kernel files get their instruction sets (they are empty elsewhere:
# the files compile to nothing off x86-64, e.g. natively on Apple Silicon).
ifneq ($(findstring x86_64,$(shell $(CC) -dumpmachine 2>/dev/null)),)
SIMD_CFLAGS = -mavx2 -mfma -mf16c
AVX512_CFLAGS = -mavx512f -mavx512bw -mavx512vl -mavx512vnni
endif
LDLIBS += $(shell pkg-config --libs jansson libpcre2-8 libmicrohttpd libcurl 2>/dev/null) -lutf8proc -ljpeg -lpng16 -lwebp -lm -pthread
CACHE ?= $(HOME)/.cache/vllm-metal
MODEL ?= $(CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
VENV = $(CACHE)/venv

LIB_SRC := $(shell find src -name '*.c' -not -path 'src/cli/*' | sort)
CLI_SRC := $(shell find src/cli -name '*.c' | sort)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(sort $(wildcard tests/c/test_*.c))
TEST_BIN := $(TEST_SRC:tests/c/%.c=$(BUILD)/tests/%)

all: $(BUILD)/vllm-metal $(BUILD)/libvllm_metal.so

# x86-64 SIMD kernels live in files named *_avx2.c and *_avx512.c and are
# chosen at run time.
$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SIMD_CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(SIMD_CFLAGS) $(AVX512_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libvllm_metal.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libvllm_metal.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/vllm-metal: $(CLI_OBJ) $(BUILD)/libvllm_metal.a
	$(CC) -o $@ $(CLI_OBJ) $(BUILD)/libvllm_metal.a $(LDLIBS)

$(BUILD)/tests/%: tests/c/%.c $(BUILD)/libvllm_metal.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libvllm_metal.a $(LDLIBS) -lcriterion

tests: $(TEST_BIN)

setup:
	scripts/setup.sh all

run: setup all
	$(BUILD)/vllm-metal --model $(MODEL)

# Every C test binary, then the Python tests (against the real references),
# then the C tests again cross-compiled for arm64 under qemu (NEON kernels).
test: setup all tests
	scripts/run_tests.sh
	$(MAKE) test-arm64

.PHONY: all setup run test tests clean
clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

-include mk/install.mk
.PHONY: install
-include mk/vulkan.mk
-include mk/blas.mk
-include mk/arm64.mk
-include mk/bench.mk
