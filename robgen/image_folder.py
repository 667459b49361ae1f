"""torchvision's `ImageFolder` as robgen reads class folders: without the folders and files that are no classes or
images (hidden ones, a Mac's __MACOSX folder and "._photo.png" AppleDouble files), which torchvision reads as a
class or tries to decode. Its own module so that `robgen.data` imports torchvision only when it reads a folder, and
a DataLoader's worker processes can unpickle it."""

from __future__ import annotations

import os
import unicodedata
from functools import partial
from pathlib import Path

from PIL import Image
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from .data import ignored_folder


IMAGE_EXTENSIONS = tuple(IMG_EXTENSIONS) + (".gif", ".jfif", ".jpe") + tuple(  # torchvision's, and what a single
    extension for extension in (".avif",) if extension in Image.registered_extensions())  # upload reads too: GIF (its
# first frame), JPEG's other names (a browser saves .jfif), AVIF where this Pillow reads it; they were skipped silently


def image_file(path: str, root: str) -> bool:
    """An image of a class folder under `root`: an image extension, not hidden (an AppleDouble "._photo.png" has
    one), and in no folder `ignored_folder` names below `root` (a class's .ipynb_checkpoints/)."""
    parts = Path(path).relative_to(root).parts
    return (not parts[-1].startswith(".") and not any(ignored_folder(part) for part in parts[:-1])
            and has_file_allowed_extension(path, IMAGE_EXTENSIONS))


def refuse_loops(root: str) -> None:
    """ValueError for a link below `root` to a folder inside it, or to `root` or a folder above it, and for any
    folder reached twice through links: torchvision's reader follows links, and read the images there twice, under
    this class's label too (a link to a sibling class), or again and again (a loop: 20 images as 820; two such
    links, without end; a loop inside a linked folder elsewhere: 1 image as 40). A link to a folder elsewhere is read
    as a folder. Walked as the reader walks (following links), each folder once: the walk stops at the first folder
    seen again."""
    top = os.path.realpath(root).rstrip(os.sep) + os.sep
    seen = {os.path.realpath(root)}
    for place, folders, _ in os.walk(root, followlinks=True):
        for name in folders:
            path = os.path.join(place, name)
            real = os.path.realpath(path)
            if os.path.islink(path) and ((real.rstrip(os.sep) + os.sep).startswith(top) or top.startswith(real.rstrip(os.sep) + os.sep)):
                raise ValueError(f"{path} links to {real}, inside the data set or above it: its images would be read "
                                 "again (a loop: again and again), under this class's label too; remove the link")
            if real in seen:
                raise ValueError(f"{path} is {real} again, reached through links (a loop, or two links to one "
                                 "folder): its images would be read again and again; remove the link")
            seen.add(real)


class ImageFolder(datasets.ImageFolder):
    """`<root>/<class>/<image>`, classes numbered in sorted order as torchvision numbers them, skipping the folders
    `data.ignored_folder` names and the files `image_file` refuses."""

    def __init__(self, root, transform=None, loader=None) -> None:
        kwargs = {} if loader is None else {"loader": loader}
        below = partial(image_file, root=os.path.expanduser(str(root)))  # torchvision's paths: root/class/...
        refuse_loops(os.path.expanduser(str(root)))
        super().__init__(root, transform=transform, is_valid_file=below, **kwargs)

    def find_classes(self, directory):
        classes = sorted((entry.name for entry in os.scandir(directory)  # sorted as composed Unicode (NFC): a folder
                          if entry.is_dir() and not ignored_folder(entry.name)),  # from a Mac's zip names "é" as e
                         key=lambda name: (unicodedata.normalize("NFC", name), name))  # and an accent, which sorted
        # after "f" as text, so its copies numbered their classes in two orders
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}
