"""ComfyUI adapters: one module per node family, each a thin layer over `core`."""
from . import caption, direction, guided, inversion, student

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _family in (inversion, direction, caption, student, guided):
    NODE_CLASS_MAPPINGS.update(_family.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_family.NODE_DISPLAY_NAME_MAPPINGS)
