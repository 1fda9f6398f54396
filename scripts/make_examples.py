"""Make the app's examples gallery, ``assets/examples/``: scenes of the test split of scene worlds 1 and 2 with
their ground truth (the app shows the selected model's world), and a few public-domain / CC0 photos (scikit-image's
bundled data images, copied and resized; scikit-image is not a dependency of the app).

    python scripts/make_examples.py --photos DIR   # DIR: the ``skimage/data`` folder of a scikit-image wheel

Writes one image per example and ``examples.json``: ``[{"file", "question", "answer", "kind", "credit", "world"}]``
(``answer`` is the ground truth for scenes, ``null`` for photos; ``world`` the scene's world, ``null`` for photos;
world-2 files are ``scene-w2-SEED.png``). Without ``--photos`` the photos already in the folder are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resprune import scenes  # noqa: E402

OUT = ROOT / "assets" / "examples"
SCENE_SEEDS = (20_000_004, 20_000_003, 20_000_005, 20_000_009)
SCENE_TYPES = ("colour", "spatial", "shape", "count")  # the question asked of each (its first one if absent)
# world 2: test scenes of the first dozen with overlapping objects, checked regions and 4-7 objects, one per question
# type, whose unpruned answer (model scenes-v2) is right, as it is for the world-1 ones: a wrong unpruned answer
# shows the model's limits, not pruning's (20_000_007's "How many squares?" is answered "two" for four)
SCENE_SEEDS_V2 = (20_000_002, 20_000_003, 20_000_010, 20_000_008)
SCENE_TYPES_V2 = ("colour", "spatial", "shape", "count")
# (file in skimage/data, question, credit as stated in scikit-image's skimage/data/_fetchers.py)
PHOTOS = (
    ("chelsea.png", "What colour is the circle?", "Chelsea the cat; CC0 by the photographer (Stefan van der Walt)"),
    ("coffee.png", "What is in the cup?", "Coffee cup; CC0 by the photographer (Rachel Michetti)"),
    ("astronaut.png", "What is the woman wearing?", "Astronaut Eileen Collins; NASA, public domain"),
)
PHOTO_SIDE = 320  # longest side of a shipped photo, pixels


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=Path, default=None, help="scikit-image's skimage/data folder")
    a = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    entries = []
    for world, seeds, types in ((1, SCENE_SEEDS, SCENE_TYPES), (2, SCENE_SEEDS_V2, SCENE_TYPES_V2)):
        for seed, qtype in zip(seeds, types):
            s = scenes.sample(seed, world)
            q = next((q for q in s.questions if q.type == qtype), s.questions[0])
            name = f"scene-{seed}.png" if world == 1 else f"scene-w{world}-{seed}.png"
            s.image.save(OUT / name, optimize=True)
            entries.append(
                {"file": name, "question": q.text, "answer": q.answer, "kind": "scene", "credit": None, "world": world}
            )
    for src, question, credit in PHOTOS:
        name = Path(src).with_suffix(".jpg").name
        if a.photos is not None:
            im = Image.open(a.photos / src).convert("RGB")
            im.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
            im.save(OUT / name, quality=85, optimize=True)
        if (OUT / name).exists():
            entries.append(
                {"file": name, "question": question, "answer": None, "kind": "photo", "credit": credit, "world": None}
            )
    (OUT / "examples.json").write_text(json.dumps(entries, indent=1) + "\n")
    for e in entries:
        print(f"{e['file']:24s} {(OUT / e['file']).stat().st_size:7,d} B  {e['question']}  -> {e['answer']}")


if __name__ == "__main__":
    main()
