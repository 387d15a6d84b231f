#!/usr/bin/env python
"""Write hospital-export look-alikes of one real Sunnybrook patient (offline, a few seconds).

Output folder layout (each a folder `cmr-assets ingest` / `cmr-assets filter` can read):
  original/                 the chosen phases of the cine, unchanged
  jpeg_ls/ jpeg_2000/ jpeg_lossless/ rle/
                            the same files transcoded losslessly (JPEG-LS, JPEG 2000, JPEG Lossless
                            SV1 = 1.2.840.10008.1.2.4.70, RLE)
  enhanced/enhanced.dcm     one Enhanced MR multi-frame file (functional groups built with pydicom)
  legacy/legacy.dcm         highdicom's Legacy Converted Enhanced MR (skipped without highdicom)
  study/                    cine + the patient's real localizers (same SeriesInstanceUID as the cine)
                            + a generated long-axis cine + a single-phase short-axis series + DICOMDIR

Example: .venv/bin/python scripts/make_pacs_testdata.py /tmp/pacs --patient SCD0000101 --phases 0 7 14
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from cmr_assets.synthetic.pacs_exports import (
    LOSSLESS_SYNTAXES,
    select_phases,
    transcode,
    write_enhanced_mr,
    write_legacy_converted_mr,
    write_study,
)

SUNNYBROOK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sunnybrook"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created; must not exist)")
    parser.add_argument("--patient", default="SCD0000101", help="Sunnybrook patient folder name")
    parser.add_argument("--phases", type=int, nargs="*", default=None,
                        help="phase ranks to keep (0 = end-diastole); default: all 20")
    parser.add_argument("--sunnybrook", type=Path, default=SUNNYBROOK, help="the Sunnybrook data folder")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists")
    cine_dir = args.sunnybrook / args.patient
    files = select_phases(cine_dir, args.phases if args.phases is not None else range(1000))
    started = time.perf_counter()
    (args.out / "original").mkdir(parents=True)
    for path in files:
        shutil.copy2(path, args.out / "original" / path.name)
    for name, syntax in LOSSLESS_SYNTAXES.items():
        transcode(files, args.out / name, syntax)
    write_enhanced_mr(files, args.out / "enhanced" / "enhanced.dcm")
    try:
        write_legacy_converted_mr(files, args.out / "legacy" / "legacy.dcm")
    except ImportError:
        print("highdicom not installed: legacy/ skipped", file=sys.stderr)
    write_study(files, args.sunnybrook / "localizers" / args.patient / "Localizers_1", args.out / "study")
    print(f"{len(files)} files per variant written under {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
