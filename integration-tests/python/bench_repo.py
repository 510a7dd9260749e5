"""Builds the TUF client benchmark's repository with python-tuf's Metadata API.

    bench_repo.py OUT_DIR [--roles N] [--targets-per-role M]

writes a repository ready to be served over HTTP as it lies (what ota-server
serves from its data directory's repository/):

  OUT_DIR/metadata/1.root.json, 1.targets.json, 1.bin-NN.json, 1.snapshot.json,
                   timestamp.json                  (consistent snapshots)
  OUT_DIR/targets/images/bin-NN/<sha256>.file-MMM.bin

Top-level targets lists no target itself and delegates `images/bin-NN/*` to
role bin-NN (one ed25519 key each, threshold 1, not terminating); each role
lists M targets of 64 random bytes. Defaults: 50 roles x 200 targets =
10,000 targets. Metadata is compact JSON (no indentation), as a repository
that cares about bandwidth publishes it.

Prints a JSON manifest on stdout: {"root", "first_target", "last_target",
"roles", "targets", "metadata_bytes"}; "last_target" is listed by the last
delegated role, so finding it walks the delegations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

TARGET_SIZE = 64


def in_days(days: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


def signed(payload, signer: Signer) -> Metadata:  # noqa: ANN001
    md = Metadata(payload)
    md.sign(signer)
    return md


def role_name(i: int) -> str:
    return f"bin-{i:02d}"


def target_name(role: int, n: int) -> str:
    return f"images/{role_name(role)}/file-{n:03d}.bin"


def build(out: str, roles: int, per_role: int) -> dict:
    serializer = JSONSerializer(compact=True)
    meta_dir = os.path.join(out, "metadata")
    os.makedirs(meta_dir, exist_ok=True)
    top = {r: CryptoSigner.generate_ed25519() for r in ("root", "timestamp", "snapshot", "targets")}

    root = Root(expires=in_days(365), consistent_snapshot=True)
    for role, signer in top.items():
        root.add_key(signer.public_key, role)
    root_md = signed(root, top["root"])

    bin_signers = [CryptoSigner.generate_ed25519() for _ in range(roles)]
    delegated = {}
    for i, signer in enumerate(bin_signers):
        name = role_name(i)
        delegated[name] = DelegatedRole(
            name=name,
            keyids=[signer.public_key.keyid],
            threshold=1,
            terminating=False,
            paths=[f"images/{name}/*"],
        )
    targets = Targets(version=1, expires=in_days(90))
    targets.delegations = Delegations(
        keys={s.public_key.keyid: s.public_key for s in bin_signers}, roles=delegated
    )
    docs = {"targets": signed(targets, top["targets"])}

    for i, signer in enumerate(bin_signers):
        inner = Targets(version=1, expires=in_days(90))
        target_dir = os.path.join(out, "targets", "images", role_name(i))
        os.makedirs(target_dir, exist_ok=True)
        for n in range(per_role):
            name = target_name(i, n)
            data = os.urandom(TARGET_SIZE)
            # sha256 only: ngclient names the file by the first listed hash,
            # ours by sha256, so one file on disk serves both.
            info = TargetFile.from_data(name, data, ["sha256"])
            inner.targets[name] = info
            basename = os.path.basename(name)
            with open(os.path.join(target_dir, f"{info.hashes['sha256']}.{basename}"), "wb") as f:
                f.write(data)
        docs[role_name(i)] = signed(inner, signer)

    snapshot = Snapshot(version=1, expires=in_days(7))
    for role, md in docs.items():
        snapshot.meta[f"{role}.json"] = MetaFile(version=md.signed.version)
    snapshot_md = signed(snapshot, top["snapshot"])
    timestamp_md = signed(
        Timestamp(version=1, expires=in_days(1), snapshot_meta=MetaFile(version=1)),
        top["timestamp"],
    )

    files = {"1.root.json": root_md, "1.snapshot.json": snapshot_md, "timestamp.json": timestamp_md}
    for role, md in docs.items():
        files[f"{md.signed.version}.{role}.json"] = md
    sizes = {}
    for name, md in files.items():
        path = os.path.join(meta_dir, name)
        md.to_file(path, serializer)
        sizes[name] = os.path.getsize(path)

    return {
        "root": os.path.join(meta_dir, "1.root.json"),
        "first_target": target_name(0, 0),
        "last_target": target_name(roles - 1, per_role - 1),
        "roles": roles,
        "targets": roles * per_role,
        "metadata_bytes": sizes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--roles", type=int, default=50)
    parser.add_argument("--targets-per-role", type=int, default=200)
    args = parser.parse_args()
    if not 1 <= args.roles <= 100 or not 1 <= args.targets_per_role <= 1000:
        print("--roles must be 1..100 and --targets-per-role 1..1000", file=sys.stderr)
        return 2
    manifest = build(args.out, args.roles, args.targets_per_role)
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
