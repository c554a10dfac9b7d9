"""Generate the course's dataset (calendar requests -> calendar records) into assets/dataset/.

    python scripts/make_dataset.py            # train / validation / test JSONL files and a README with the license

Deterministic: the same seed gives the same files byte for byte (tests/test_data.py checks the shipped copy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "assets" / "dataset"), help="folder (default %(default)s)")
    parser.add_argument("--seed", type=int, default=data.DATASET_SEED)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    splits = data.make_dataset(seed=args.seed)
    paths = data.write_dataset(args.out, splits)
    for split, path in paths.items():
        print(f"{split:>10}: {len(splits[split]):5d} examples -> {path} ({path.stat().st_size / 1e3:.0f} kB)")
    example = splits["train"][0]
    print(f"example: {example['request']!r}\n      -> {example['target']!r}")
    print(f"done in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
