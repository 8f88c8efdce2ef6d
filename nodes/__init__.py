"""ComfyUI adapters: one module per node family, each a thin layer over `core`."""
from . import bundled, caption, direction, guided, inversion, student

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _family in (inversion, direction, caption, student, guided):
    NODE_CLASS_MAPPINGS.update(_family.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_family.NODE_DISPLAY_NAME_MAPPINGS)

# The example workflows' photo, in ComfyUI's input folder under the pack's own name (never over a user's file).
bundled.install_example_photo()
