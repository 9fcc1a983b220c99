"""Thumbnails of the report, written once: each file is named by a hash of everything its pixels
depend on (image bytes, map values, display, colormap, size), so the next report of the same
output reuses it and decodes no image whose thumbnails all exist.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fdpipe.display import Colormap, Display, display_for
from fdpipe.images import load_image
from fdpipe.job.inputs import key_file
from fdpipe.job.reader import MapRow
from fdpipe.render import overlay
from fdpipe.report.scan import ImageEntry
from PIL import Image

THUMBS = "thumbs"  # folder of the site


@dataclass
class Thumbnails:
    site: Path
    size: int
    cmap: Colormap
    display: Display | None  # None: chosen per method
    images_root: Path | None  # None: images are not reachable, maps are shown alone
    written: int = 0
    reused: int = 0
    missing_images: int = 0

    def for_image(self, image: ImageEntry) -> tuple[str | None, dict[int, str]]:
        """The photo's thumbnail and one overlay per map of ``image`` (by index in its maps);
        relative paths inside the site. The photo is decoded at most once, and only if a
        thumbnail is missing; never for a failed image (the run could not decode it)."""
        if image.status == "failed":
            return None, {}
        decoded: list[Image.Image | None] = []

        def picture() -> Image.Image | None:
            if not decoded:
                decoded.append(self._load(image))
            return decoded[0]

        seed = image.sha256 or image.path
        photo_name = self._name("photo", seed)
        photo: str | None = photo_name
        if not self._exists(photo_name):
            loaded = picture()
            if loaded is None:
                photo = None
            else:
                self._save(loaded, photo_name)
        overlays = {}
        for index, entry in enumerate(image.maps):
            shown = display_for(entry.method, self.display)
            drawn = (repr(shown), repr(entry.box), repr(entry.frame), self.cmap.name)
            name = self._name("map", seed, entry.native.tobytes(), *drawn)
            if not self._exists(name):
                self._save(self._overlay(picture(), entry, shown), name)
            overlays[index] = name
        return photo, overlays

    def _load(self, image: ImageEntry) -> Image.Image | None:
        if self.images_root is None:
            return None
        try:
            loaded = load_image(key_file(self.images_root, image.path))
        except (OSError, ValueError):  # moved, deleted or unreadable since the run
            self.missing_images += 1
            return None
        loaded.thumbnail((self.size, self.size))
        return loaded

    def _overlay(self, picture: Image.Image | None, entry: MapRow, shown: Display) -> Image.Image:
        if picture is None:  # the map alone, coloured, at the thumbnail's size
            heat = self.cmap(shown.apply(entry.native))
            return Image.fromarray(heat).resize((self.size, self.size), Image.Resampling.NEAREST)
        # the box is in the original image's pixels: placed on the thumbnail through its frame
        return overlay(picture, entry.native, 0.5, entry.box, shown, self.cmap, entry.frame)

    def _name(self, kind: str, *parts: str | bytes) -> str:
        digest = hashlib.sha256(f"{kind}|{self.size}".encode())
        for part in parts:
            digest.update(b"|")
            digest.update(part if isinstance(part, bytes) else part.encode("utf-8", "replace"))
        hexed = digest.hexdigest()[:32]
        return f"{THUMBS}/{hexed[:2]}/{hexed}.jpg"  # 256 folders: no huge directory listing

    def _exists(self, name: str) -> bool:
        if (self.site / name).is_file():
            self.reused += 1
            return True
        return False

    def _save(self, picture: Image.Image, name: str) -> None:
        """Atomically: an interrupted report never leaves a partial file to be reused."""
        target = self.site / name
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        picture.convert("RGB").save(temp, format="JPEG", quality=85)
        os.replace(temp, target)
        self.written += 1


__all__ = ["THUMBS", "Thumbnails"]
