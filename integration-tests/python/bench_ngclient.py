"""python-tuf's ngclient for the TUF client benchmark: one refresh, and
optionally one target found and downloaded, from a served repository.

    bench_ngclient.py --metadata-dir DIR --metadata-url URL
                      [--target-name PATH --targets-url URL --download-dir DIR]

METADATA_DIR/root.json is the trusted root (copied there before a fresh run;
after a run it holds the newest trusted root and the other roles, so a second
run is ngclient's idle poll). Prints one JSON line on stdout:
{"seconds": in-process time from Updater creation to the end}, so the report
can tell interpreter start-up and imports from the client's own work.
Exit 1 with the reason on stderr on any failure.
"""

import argparse
import json
import os
import sys
import time


def main() -> int:
    started = time.perf_counter()
    from tuf.ngclient import Updater  # imported inside: its cost is part of "startup"

    imported = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata-dir", required=True)
    parser.add_argument("--metadata-url", required=True)
    parser.add_argument("--targets-url")
    parser.add_argument("--target-name")
    parser.add_argument("--download-dir")
    args = parser.parse_args()
    if args.target_name and not (args.targets_url and args.download_dir):
        print("--target-name needs --targets-url and --download-dir", file=sys.stderr)
        return 2

    with open(os.path.join(args.metadata_dir, "root.json"), "rb") as f:
        trusted_root = f.read()
    work_started = time.perf_counter()
    try:
        updater = Updater(
            metadata_dir=args.metadata_dir,
            metadata_base_url=args.metadata_url,
            target_dir=args.download_dir,
            target_base_url=args.targets_url,
            bootstrap=trusted_root,
        )
        updater.refresh()
        if args.target_name:
            info = updater.get_targetinfo(args.target_name)
            if info is None:
                print(f"target {args.target_name!r} not listed", file=sys.stderr)
                return 1
            updater.download_target(info)
    except Exception as e:  # noqa: BLE001 - any refusal fails the benchmark, with its reason
        print(f"python-tuf: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    done = time.perf_counter()
    print(
        json.dumps(
            {"seconds": done - work_started, "import_seconds": imported - started}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
