# mk/vulkan.mk - the Vulkan compute backend (src/backend/vulkan).
# Built when the Vulkan headers/loader (pkg-config vulkan) and glslc exist;
# otherwise vulkan_backend.c compiles to a stub whose factory says
# "built without Vulkan". Shaders are compiled to SPIR-V at build time and
# embedded as C arrays (glslc -mfmt=num) from $(BUILD)/vulkan/*.inc.
VK_DIR := src/backend/vulkan
VK_GEN := $(BUILD)/vulkan
VK_OK := $(shell pkg-config --exists vulkan 2>/dev/null && command -v glslc >/dev/null 2>&1 && echo 1)

# name:source:defines (defines comma-separated; NOOPT: no spirv-opt pass, which
# crashes on cooperative-matrix arithmetic in glslang 11)
VK_SHADERS := \
  matvec1_f32:matvec:WT=0,TN=1 matvec1_f16:matvec:WT=1,TN=1 matvec1_bf16:matvec:WT=2,TN=1 matvec1_a4:matvec:WT=3,TN=1 matvec1_a8:matvec:WT=4,TN=1 matvec1_a2:matvec:WT=5,TN=1 \
  matvec1s_f32:matvec:WT=0,TN=1,U=1 matvec1s_f16:matvec:WT=1,TN=1,U=1 matvec1s_bf16:matvec:WT=2,TN=1,U=1 matvec1s_a4:matvec:WT=3,TN=1,U=1 matvec1s_a8:matvec:WT=4,TN=1,U=1 matvec1s_a2:matvec:WT=5,TN=1,U=1 \
  matvec4_f32:matvec:WT=0,TN=4 matvec4_f16:matvec:WT=1,TN=4 matvec4_bf16:matvec:WT=2,TN=4 matvec4_a4:matvec:WT=3,TN=4 matvec4_a8:matvec:WT=4,TN=4 matvec4_a2:matvec:WT=5,TN=4 \
  matvec8_f32:matvec:WT=0,TN=8 matvec8_f16:matvec:WT=1,TN=8 matvec8_bf16:matvec:WT=2,TN=8 matvec8_a4:matvec:WT=3,TN=8 matvec8_a8:matvec:WT=4,TN=8 matvec8_a2:matvec:WT=5,TN=8 \
  gemm64_f32:gemm:WT=0,TR=4,TT=4 gemm64_f16:gemm:WT=1,TR=4,TT=4 gemm64_bf16:gemm:WT=2,TR=4,TT=4 gemm64_a4:gemm:WT=3,TR=4,TT=4 gemm64_a8:gemm:WT=4,TR=4,TT=4 gemm64_a2:gemm:WT=5,TR=4,TT=4 \
  gemm32_f32:gemm:WT=0,TR=8,TT=2 gemm32_f16:gemm:WT=1,TR=8,TT=2 gemm32_bf16:gemm:WT=2,TR=8,TT=2 gemm32_a4:gemm:WT=3,TR=8,TT=2 gemm32_a8:gemm:WT=4,TR=8,TT=2 gemm32_a2:gemm:WT=5,TR=8,TT=2 \
  gemmcm_f16:gemm_cm:WT=1,NOOPT gemmcm_bf16:gemm_cm:WT=2,NOOPT gemmcm_a4:gemm_cm:WT=3,NOOPT gemmcm_a8:gemm_cm:WT=4,NOOPT \
  embed_f32:embed:WT=0 embed_f16:embed:WT=1 embed_bf16:embed:WT=2 \
  embed_a4:embed:WT=3 embed_a8:embed:WT=4 embed_a2:embed:WT=5 \
  rmsnorm:rmsnorm: rope:rope: rope_kv_f32:rope_kv:KV16=0 rope_kv_f16:rope_kv:KV16=1 \
  cache_write_f32:cache_write:KV16=0 cache_write_f16:cache_write:KV16=1 \
  attention_f32:attention:KV16=0 attention_f16:attention:KV16=1 \
  add:eltwise:OP=0 swiglu:eltwise:OP=1 add_bias:eltwise:OP=2 get_rows:eltwise:OP=3 \
  sample:sample: splitk:splitk: q8act:q8act:

ifeq ($(VK_OK),1)
$(BUILD)/$(VK_DIR)/vulkan_backend.o: CFLAGS += -DVM_HAVE_VULKAN -I$(VK_GEN) $(shell pkg-config --cflags vulkan)
$(BUILD)/$(VK_DIR)/vulkan_backend.o: $(VK_GEN)/shaders.stamp
LDLIBS += $(shell pkg-config --libs vulkan)

$(VK_GEN)/shaders.stamp: $(wildcard $(VK_DIR)/shaders/*.comp $(VK_DIR)/shaders/*.glsl) mk/vulkan.mk
	@mkdir -p $(VK_GEN)
	@set -e; for s in $(VK_SHADERS); do \
	  name=$${s%%:*}; rest=$${s#*:}; src=$${rest%%:*}; defs=$${rest#*:}; \
	  d=""; for x in $$(echo $$defs | tr ',' ' '); do d="$$d -D$$x"; done; \
	  echo "glslc $$src.comp$$d -> $(VK_GEN)/$$name.inc"; \
	  opt=-O; case "$$defs" in *NOOPT*) opt=-O0;; esac; \
	  glslc --target-env=vulkan1.2 $$opt -mfmt=num $$d -o $(VK_GEN)/$$name.inc $(VK_DIR)/shaders/$$src.comp; \
	done
	@touch $@
else
$(info vulkan backend skipped: needs the Vulkan headers (pkg-config vulkan; Debian: libvulkan-dev) and glslc)
endif
