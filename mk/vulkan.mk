# mk/vulkan.mk - the Vulkan compute backend (src/backend/vulkan).
# Built when the Vulkan headers/loader (pkg-config vulkan) and glslc exist;
# otherwise vulkan_backend.c compiles to a stub whose factory says
# "built without Vulkan". Shaders are compiled to SPIR-V at build time and
# embedded as C arrays (glslc -mfmt=num) from $(BUILD)/vulkan/*.inc.
VK_DIR := src/backend/vulkan
VK_GEN := $(BUILD)/vulkan
VK_OK := $(shell pkg-config --exists vulkan 2>/dev/null && command -v glslc >/dev/null 2>&1 && echo 1)

# name:source:defines (defines comma-separated)
VK_SHADERS := \
  matmul_f32:matmul:WT=0 matmul_f16:matmul:WT=1 matmul_bf16:matmul:WT=2 \
  matmul_a4:matmul:WT=3 matmul_a8:matmul:WT=4 matmul_a2:matmul:WT=5 \
  matmul16_f32:matmul:WT=0,TN=16 matmul16_f16:matmul:WT=1,TN=16 matmul16_bf16:matmul:WT=2,TN=16 \
  matmul16_a4:matmul:WT=3,TN=16 matmul16_a8:matmul:WT=4,TN=16 matmul16_a2:matmul:WT=5,TN=16 \
  embed_f32:embed:WT=0 embed_f16:embed:WT=1 embed_bf16:embed:WT=2 \
  embed_a4:embed:WT=3 embed_a8:embed:WT=4 embed_a2:embed:WT=5 \
  rmsnorm:rmsnorm: rope:rope: \
  cache_write_f32:cache_write:KV16=0 cache_write_f16:cache_write:KV16=1 \
  attention_f32:attention:KV16=0 attention_f16:attention:KV16=1 attn_combine:attn_combine: \
  add:eltwise:OP=0 swiglu:eltwise:OP=1 add_bias:eltwise:OP=2 get_rows:eltwise:OP=3

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
	  glslc --target-env=vulkan1.2 -O -mfmt=num $$d -o $(VK_GEN)/$$name.inc $(VK_DIR)/shaders/$$src.comp; \
	done
	@touch $@
else
$(info vulkan backend skipped: needs the Vulkan headers (pkg-config vulkan; Debian: libvulkan-dev) and glslc)
endif
