"""Band names as files write them, matched to the names a model or ``data.bands`` wants.

GDAL band descriptions come in many spellings: ``red``, ``Red``, ``B4 (red)``, ``nir08``,
``Near Infrared``. A wanted name is matched exactly first (ignoring case), then as a whole
word of the description (``B4 (red)`` names red), with ``near infrared`` (or ``Near Infra-Red``)
standing for ``nir`` and ``short-wave infrared`` for ``swir``; infrared never names red.
A description with ``edge`` in it (Sentinel-2's ``Red Edge 1``) names no colour: a red-edge
band is not red. Codes alone (``B4``) name nothing: Sentinel-2's B4 is red, Landsat 8's is red
too but its B5 is near infrared where Sentinel-2's is red edge, so codes need a declaration.
"""

from __future__ import annotations

import re


def _words(name: str) -> list[str]:
    """Letters and digits apart: ``nir08`` -> nir, 08; ``B4 (red)`` -> b, 4, red."""
    return re.findall(r"[a-z]+|\d+", name.lower())


def names_band(name: str, wanted: str) -> bool:
    """Whether a band ``name`` (a description or colour interpretation) names ``wanted``."""
    name, wanted = name.strip().lower(), wanted.strip().lower()
    if not name:
        return False
    if name == wanted:
        return True
    if "edge" in name:
        return False
    words = _words(name)
    infrared = _infrared(words)
    if infrared is not None:  # "Near Infra-Red" names nir, never red
        return wanted == infrared
    return wanted in words


def _infrared(words: list[str]) -> str | None:
    """``nir`` for near infrared, ``swir`` for short-wave infrared, '' for infrared of no
    named kind; None for a name that is not of an infrared band."""
    if "infrared" not in words and not ("infra" in words and "red" in words):
        return None
    if "near" in words:
        return "nir"
    if "short" in words or "shortwave" in words:
        return "swir"
    return ""


def pick_by_name(names: list[str], wanted: list[str]) -> list[int] | None:
    """1-based bands named by each ``wanted`` name, in its order, when every one names exactly
    one band (an exact name before a word in a description) and no band twice; else None."""
    picked: list[int] = []
    for w in wanted:
        exact = [i for i, n in enumerate(names, start=1) if n.strip().lower() == w.lower()]
        hits = exact or [i for i, n in enumerate(names, start=1) if names_band(n, w)]
        if len(hits) != 1:
            return None
        picked.append(hits[0])
    return picked if len(set(picked)) == len(picked) else None


def contradiction(names: list[str], bands: list[int], wanted: list[str]) -> str | None:
    """Where reading ``bands`` as ``wanted`` contradicts their names (a band named blue read as
    red): ``band 1 (blue) as red, ...``; None when no used band names another wanted band."""
    wrong = []
    for band, w in zip(bands, wanted, strict=True):
        name = names[band - 1]
        if names_band(name, w):
            continue
        other = [o for o in wanted if o != w and names_band(name, o)]
        if other:
            wrong.append(f"band {band} ({name}) as {w}")
    return ", ".join(wrong) or None
