"""Files the pack brings along, made available to ComfyUI when the pack loads, never over anything of the user's.

- ``assets/cat.jpg`` (the pix2pix-zero authors' test photo cat_1.png, MIT) is copied into ComfyUI's input folder as
  ``pix2pix_zero_cat.jpg``, the photo the example workflows open on (ComfyUI's input folder ships ``example.png``
  only). Copied only if no file of that name is there; a different file under that name is left alone, and logged.
- ``directions/`` (edit directions made from the authors' SD 1.4 word embeddings, the same CLIP ViT-L/14 text encoder
  as SD 1.5) is added after the user's folders to ``pix2pix_zero_directions``, so Load Edit Direction lists them and
  a user's file of the same name comes first.
"""
import filecmp
import logging
import os
import shutil

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_SOURCE = os.path.join(PACK_DIR, "assets", "cat.jpg")
PHOTO_NAME = "pix2pix_zero_cat.jpg"  # the name the example workflows' LoadImage nodes give
DIRECTIONS_DIR = os.path.join(PACK_DIR, "directions")

log = logging.getLogger("pix2pix-zero")


def install_example_photo(input_dir=None, source=PHOTO_SOURCE, name=PHOTO_NAME):
    """Copy ``source`` to ``<input_dir>/<name>`` if no such file exists. Returns what happened: "copied", "present"
    (the same file is there), "kept" (a different file has the name: left as it is), or "skipped" (no input folder,
    or it cannot be written: logged, the pack still loads)."""
    try:
        if input_dir is None:
            import folder_paths

            input_dir = folder_paths.get_input_directory()
        target = os.path.join(input_dir, name)
        if os.path.lexists(target):
            if os.path.isfile(target) and filecmp.cmp(source, target, shallow=False):
                return "present"
            log.info("pix2pix-zero: %s exists and is not the pack's cat photo; it is left as it is (the example "
                     "workflows will open on it). Delete or rename it to get the pack's photo back.", target)
            return "kept"
        os.makedirs(input_dir, exist_ok=True)
        tmp = target + ".pix2pix-zero-tmp"
        shutil.copyfile(source, tmp)
        try:
            os.link(tmp, target)  # fails if the name appeared meanwhile: never replaces anything
        except FileExistsError:
            return "kept"
        except OSError:
            if os.path.lexists(target):
                return "kept"
            os.rename(tmp, target)
            tmp = None
        finally:
            if tmp and os.path.lexists(tmp):
                os.remove(tmp)
        return "copied"
    except Exception as e:  # a read-only or missing input folder must not stop the pack from loading
        log.warning("pix2pix-zero: could not copy the example photo into ComfyUI's input folder (%s: %s); the "
                    "example workflows name %s: load any photo instead.", type(e).__name__, e, name)
        return "skipped"


def add_bundled_directions(folder_name):
    """Append the pack's ``directions/`` folder to the model folder ``folder_name`` (after the user's)."""
    import folder_paths

    if os.path.isdir(DIRECTIONS_DIR):
        folder_paths.add_model_folder_path(folder_name, DIRECTIONS_DIR)
