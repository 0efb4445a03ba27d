// vulkan_backend.h - the Vulkan compute backend (GLSL shaders -> SPIR-V,
// embedded). Runs on NVIDIA/AMD/Intel, Apple GPUs through MoltenVK, and on
// Mesa's lavapipe (a CPU device, for tests).
#ifndef VM_VULKAN_BACKEND_H
#define VM_VULKAN_BACKEND_H

#include "../backend.h"

// device_hint: NULL/"" picks a GPU (discrete first, then integrated, virtual,
// and only then a CPU device such as lavapipe); otherwise a device index
// ("0", "1", ...) or a case-insensitive substring of the device name
// ("llvmpipe", "nvidia"). VLLM_METAL_VULKAN_DEVICE, when set, overrides the hint.
// Returns NULL with a message when there is no usable device, or
// "built without Vulkan" when the library was built without it.
vm_backend *vm_backend_vulkan_create(const char *device_hint, vm_err *e);

// The chosen device's name, and whether it is a CPU implementation (lavapipe),
// which callers should not prefer over the CPU backend.
const char *vm_backend_vulkan_device_name(const vm_backend *be);
int vm_backend_vulkan_is_software(const vm_backend *be);

#endif
