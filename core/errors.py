"""The module name the pack's own exception types report (standard library only).

ComfyUI's error report and its console name an exception's type as ``type.__module__ + "." + type.__qualname__``
(``execution.full_type_name``), and ComfyUI imports a custom node pack under the path of its folder, so a type
defined in core/student.py would read ``/home/me/ComfyUI/custom_nodes/comfyui-pix2pix-zero.core.student.
StudentFileError``. Every exception class of the pack sets ``__module__ = ERROR_MODULE`` instead, which reads
``pix2pix_zero.StudentFileError`` wherever the pack is installed. (Pickling such an exception by reference is not
supported; nothing in ComfyUI does.)
"""

ERROR_MODULE = "pix2pix_zero"
