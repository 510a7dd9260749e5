"""python-tuf's reference client (ngclient.Updater) against one of our repositories.

Refreshes the top-level metadata from METADATA_URL starting from the trusted
root in METADATA_DIR/root.json, downloads TARGET_NAME from TARGETS_URL, and
checks the verified bytes equal EXPECTED_FILE. Exit 0 on success; on any
failure, exit 1 with the reason on stderr (the Rust test shows it).
"""

import argparse
import os
import sys

from tuf.ngclient import Updater


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata-dir", required=True)
    parser.add_argument("--metadata-url", required=True)
    parser.add_argument("--targets-url", required=True)
    parser.add_argument("--target-name", required=True)
    parser.add_argument("--download-dir", required=True)
    parser.add_argument("--expected-file", required=True)
    args = parser.parse_args()

    with open(os.path.join(args.metadata_dir, "root.json"), "rb") as f:
        trusted_root = f.read()
    updater = Updater(
        metadata_dir=args.metadata_dir,
        metadata_base_url=args.metadata_url,
        target_dir=args.download_dir,
        target_base_url=args.targets_url,
        bootstrap=trusted_root,
    )
    try:
        updater.refresh()
        info = updater.get_targetinfo(args.target_name)
        if info is None:
            print(f"target {args.target_name!r} not listed by the repository", file=sys.stderr)
            return 1
        path = updater.download_target(info)
    except Exception as e:  # every python-tuf refusal is a test failure, with its reason
        print(f"python-tuf refused the repository: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    with open(path, "rb") as got, open(args.expected_file, "rb") as want:
        if got.read() != want.read():
            print(f"{path}: downloaded bytes differ from {args.expected_file}", file=sys.stderr)
            return 1
    print(f"ok: {args.target_name} ({info.length} bytes) verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
