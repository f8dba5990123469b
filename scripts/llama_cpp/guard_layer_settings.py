#!/usr/bin/env python3
"""Lets llama.cpp's Vulkan backend build against Vulkan headers older than
VK_EXT_layer_settings (Debian 12 ships 1.3.239): wraps the block of ggml-vulkan.cpp that
fills vk::LayerSettingsCreateInfoEXT (validation-layer options only) in
`#ifdef VK_EXT_layer_settings`, creating the instance without it otherwise. Idempotent.

    guard_layer_settings.py ggml/src/ggml-vulkan/ggml-vulkan.cpp
"""
import pathlib
import sys

MARK = "// webmoe peer-bench: guarded VK_EXT_layer_settings"
START = "    VkBool32 enable_best_practice = layer_settings;\n"
END = "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions, &layer_setting_info);\n"


def main(path):
    p = pathlib.Path(path)
    text = p.read_text()
    if MARK in text:
        return
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        sys.exit(f"{path}: the layer-settings block was not found; this llama.cpp needs no patch or another one")
    end += len(END)
    block = text[start:end]
    guarded = (f"{MARK}\n#ifdef VK_EXT_layer_settings\n{block}#else\n"
               "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);\n"
               "#endif\n")
    p.write_text(text[:start] + guarded + text[end:])


if __name__ == "__main__":
    main(sys.argv[1])
