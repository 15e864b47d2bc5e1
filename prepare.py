"""Write the ImageNet metadata ("extra") files the v2 dataset reads.

    python prepare.py --root R --extra E

R holds labels.txt and train/ val/ test/ in the DINOv2 layout (see README); E receives
entries-{SPLIT}.npy, class-ids-{SPLIT}.npy and class-names-{SPLIT}.npy for every split present.
The logic lives in simdinov2.data.datasets.image_net (ImageNet.dump_extra); this is only the CLI.
"""

from __future__ import annotations

import argparse
import sys

from simdinov2.help_format import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--root", required=True, help="ImageNet root (labels.txt, train/, val/, test/)")
    parser.add_argument("--extra", required=True, help="folder for the generated .npy files")
    args = parser.parse_args(argv)

    from simdinov2.data.datasets.image_net import ImageNet

    try:
        counts = ImageNet.dump_extra(args.root, args.extra)
    except (OSError, ValueError) as e:
        print(f"prepare.py: error: {e}", file=sys.stderr)
        return 2
    for split, count in counts.items():
        print(f"{split}: {count} images -> {args.extra}/entries-{split}.npy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
