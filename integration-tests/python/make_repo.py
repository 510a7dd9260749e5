"""Builds static TUF repositories with python-tuf's Metadata API, for our client to read.

    make_repo.py CASE OUT_DIR

writes OUT_DIR/expected.img (the target's bytes), OUT_DIR/valid/ (a correct
repository: metadata/ with consistent-snapshot names, targets/ with
<hash>.<basename> files) and one tampered copy per attack in
OUT_DIR/<variant>/, then prints a JSON manifest on stdout:
{"target_name", "expected", "root", "repos": {name: dir}}. "root" is the
trusted root to provision (metadata/1.root.json, the same in every copy).

Cases (the keys and layout the repository uses):
  ed25519, ecdsa, ecdsa-legacy-keytype, rsa-pss-salt32, rsa-pss-salt-max:
      every role's keys of that kind
  sha512-only: targets list only a sha512 hash (files named by it)
  delegated: top-level targets delegates images/board-a/* to role board-a,
      which lists the target
  root-rotation: 1.root -> 2.root with every key replaced, 2.root signed by
      the old and new root keys
  rotation-from-expired-root: the same, from a trusted 1.root that has expired
  no-consistent-snapshot: plain file names (snapshot.json, rootfs-1.2.0.img)
  snapshot-hashes: snapshot and timestamp give length and sha256 of the files
  unicode: a target path with non-ASCII and a space, custom fields with
      escapes, control characters, emoji, big integers (canonical JSON)

Variants (each expected to be refused):
  image-flipped: one byte of the target file changed
  targets-modified: the role listing the target edited without re-signing
  timestamp-expired: timestamp re-signed with an expiry in the past
  signature-removed: the role listing the target (threshold 2) keeps one signature
  signature-duplicated: that role's one valid signature, listed twice
  duplicate-keyid-<role>: every valid signature of <role> kept and its first
      one listed again at the end (the threshold is met, but a key id appears
      twice, which the spec forbids); the files that list <role> re-signed
      for the new bytes, so the repetition is the only fault. <role> is
      timestamp, snapshot, targets, the delegated role, and (rotation cases)
      the new root
  root-new-keys-only (rotation cases only): 2.root signed by the new root key alone
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse
from urllib.request import url2pathname

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer, SSlibKey
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
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater

TARGET_NAME = "images/board-a/rootfs-1.2.0.img"
# Non-ASCII and a space in the path: URLs must escape it, file names keep it.
UNICODE_TARGET_NAME = "images/board-a/Grüße rootfs 1.2.0.img"
DELEGATED_ROLE = "board-a"
CASES = [
    "ed25519",
    "ecdsa",
    "ecdsa-legacy-keytype",
    "rsa-pss-salt32",
    "rsa-pss-salt-max",
    "sha512-only",
    "delegated",
    "root-rotation",
    "rotation-from-expired-root",
    "no-consistent-snapshot",
    "snapshot-hashes",
    "unicode",
]


class RsaPssMaxSaltSigner(Signer):
    """RSASSA-PSS-SHA256 with the largest salt the key allows.

    securesystemslib's CryptoSigner always uses a 32-byte salt (the digest
    length); other TUF implementations (go-tuf, older securesystemslib) sign
    with the maximum, and a client must accept both.
    """

    def __init__(self) -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = SSlibKey.from_crypto(
            self._private_key.public_key(), scheme="rsassa-pss-sha256"
        )

    @property
    def public_key(self) -> Key:
        return self._public_key

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):  # noqa: ANN001
        raise NotImplementedError("generated in memory only")

    def sign(self, payload: bytes) -> Signature:
        sig = self._private_key.sign(
            payload,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
            hashes.SHA256(),
        )
        return Signature(self._public_key.keyid, sig.hex())


def new_signer(kind: str) -> Signer:
    if kind == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    if kind == "ecdsa-legacy-keytype":
        # The keytype older repositories (and the TUF spec's examples) use.
        signer = CryptoSigner.generate_ecdsa()
        old = signer.public_key
        legacy = SSlibKey(
            old.keyid, "ecdsa-sha2-nistp256", old.scheme, dict(old.keyval)
        )
        signer._public_key = legacy  # noqa: SLF001 - CryptoSigner has no setter
        return signer
    if kind == "rsa-pss-salt32":
        return CryptoSigner.generate_rsa(size=2048)
    if kind == "rsa-pss-salt-max":
        return RsaPssMaxSaltSigner()
    return CryptoSigner.generate_ed25519()


def key_kind(case: str) -> str:
    return case if case in CASES[:5] else "ed25519"


def in_days(days: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


class RepoBuilder:
    """Keeps the signed metadata of one repository and writes it out."""

    def __init__(self, case: str, image: bytes) -> None:
        self.case = case
        self.target_name = UNICODE_TARGET_NAME if case == "unicode" else TARGET_NAME
        self.consistent = case != "no-consistent-snapshot"
        self.serializer = JSONSerializer(compact=False)
        kind = key_kind(case)
        self.signers: dict[str, list[Signer]] = {
            "root": [new_signer(kind)],
            "timestamp": [new_signer(kind)],
            "snapshot": [new_signer(kind)],
            "targets": [new_signer(kind), new_signer(kind)],
        }
        self.delegated = case == "delegated"
        self.holder = DELEGATED_ROLE if self.delegated else "targets"
        if self.delegated:
            self.signers[DELEGATED_ROLE] = [new_signer(kind), new_signer(kind)]
        # Two keys, threshold two, on the role listing the target: removing
        # one signature leaves a valid one, so only the threshold count refuses it.
        self.targets_threshold = 1 if self.delegated else 2

        self.roots: list[Metadata[Root]] = []
        # A trusted root may be expired: only the newest root's expiry counts (spec 5.3.10).
        root_expires = in_days(-1) if case == "rotation-from-expired-root" else in_days(365)
        root = Root(expires=root_expires, consistent_snapshot=self.consistent)
        self._set_top_level_keys(root)
        self.roots.append(self._signed(root, self.signers["root"]))

        hash_algorithms = ["sha512"] if case == "sha512-only" else ["sha256", "sha512"]
        self.target = TargetFile.from_data(self.target_name, image, hash_algorithms)
        if case == "unicode":
            # Canonical JSON escapes only quote and backslash; everything else is raw UTF-8.
            self.target.unrecognized_fields["custom"] = {
                "release_notes": 'Grüße "quoted" \\ back\nslash\t✓ 🚀',
                "nested": {"b": [1, -2, 3000000000], "a": None, "Z": True},
            }
        self.image = image

        if case in ("root-rotation", "rotation-from-expired-root"):
            self.rotate_root()
        self.sign_roles()

    def _set_top_level_keys(self, root: Root) -> None:
        for role, signers in self.signers.items():
            if role == DELEGATED_ROLE:
                continue
            for signer in signers:
                root.add_key(signer.public_key, role)
        root.roles["targets"].threshold = self.targets_threshold

    @staticmethod
    def _signed(signed, signers: list[Signer]) -> Metadata:
        md = Metadata(signed)
        for signer in signers:
            md.sign(signer, append=True)
        return md

    def rotate_root(self) -> None:
        """2.root: every key replaced; signed by the old root key and the new one."""
        old_root_signers = self.signers["root"]
        kind = key_kind(self.case)
        for role in list(self.signers):
            self.signers[role] = [new_signer(kind) for _ in self.signers[role]]
        root = copy.deepcopy(self.roots[-1].signed)
        root.version += 1
        root.expires = in_days(365)
        for role in ("root", "timestamp", "snapshot", "targets"):
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
        self._set_top_level_keys(root)
        self.roots.append(self._signed(root, old_root_signers + self.signers["root"]))
        # The attack: the same new root, vouched for by the new key alone.
        self.root_new_keys_only = self._signed(root, self.signers["root"])

    def sign_roles(self, timestamp_expires: datetime | None = None) -> None:
        targets = Targets(version=1, expires=in_days(90))
        self.role_docs: dict[str, Metadata] = {}
        if self.delegated:
            inner = Targets(version=1, expires=in_days(90))
            inner.targets[self.target_name] = self.target
            keys = {s.public_key.keyid: s.public_key for s in self.signers[DELEGATED_ROLE]}
            targets.delegations = Delegations(
                keys=keys,
                roles={
                    DELEGATED_ROLE: DelegatedRole(
                        name=DELEGATED_ROLE,
                        keyids=list(keys),
                        threshold=2,
                        terminating=True,
                        paths=["images/board-a/*"],
                    )
                },
            )
            self.role_docs[DELEGATED_ROLE] = self._signed(inner, self.signers[DELEGATED_ROLE])
        else:
            targets.targets[self.target_name] = self.target
        self.role_docs["targets"] = self._signed(targets, self.signers["targets"])

        snapshot = Snapshot(version=1, expires=in_days(7))
        for role, md in self.role_docs.items():
            snapshot.meta[f"{role}.json"] = self.meta_file(md)
        self.snapshot = self._signed(snapshot, self.signers["snapshot"])
        self.sign_timestamp(timestamp_expires or in_days(1))

    def sign_timestamp(self, expires: datetime) -> None:
        timestamp = Timestamp(
            version=1, expires=expires, snapshot_meta=self.meta_file(self.snapshot)
        )
        self.timestamp = self._signed(timestamp, self.signers["timestamp"])

    def meta_file(self, md: Metadata) -> MetaFile:
        """How snapshot and timestamp describe a file: its version, and in the
        snapshot-hashes case also the length and sha256 of its exact bytes."""
        if self.case == "snapshot-hashes":
            return MetaFile.from_data(md.signed.version, md.to_bytes(self.serializer), ["sha256"])
        return MetaFile(version=md.signed.version)

    def meta_name(self, role: str, version: int) -> str:
        return f"{version}.{role}.json" if self.consistent else f"{role}.json"

    def write(self, out: str) -> None:
        meta_dir = os.path.join(out, "metadata")
        os.makedirs(meta_dir)
        serializer = self.serializer
        for root in self.roots:
            root.to_file(os.path.join(meta_dir, f"{root.signed.version}.root.json"), serializer)
        for role, md in self.role_docs.items():
            md.to_file(os.path.join(meta_dir, self.meta_name(role, md.signed.version)), serializer)
        self.snapshot.to_file(
            os.path.join(meta_dir, self.meta_name("snapshot", self.snapshot.signed.version)),
            serializer,
        )
        self.timestamp.to_file(os.path.join(meta_dir, "timestamp.json"), serializer)
        # Consistent target names: <hash>.<basename> for every listed hash.
        target_dir = os.path.join(out, "targets", os.path.dirname(self.target_name))
        os.makedirs(target_dir)
        basename = os.path.basename(self.target_name)
        names = [f"{d}.{basename}" for d in self.target.hashes.values()]
        for name in names if self.consistent else [basename]:
            with open(os.path.join(target_dir, name), "wb") as f:
                f.write(self.image)

    def meta_file_for(self, version: int, data: bytes) -> MetaFile:
        """meta_file() for bytes that no Metadata object can hold."""
        if self.case == "snapshot-hashes":
            return MetaFile.from_data(version, data, ["sha256"])
        return MetaFile(version=version)

    def write_duplicated_keyid(self, repo: str, role: str) -> None:
        """Rewrites `role` in `repo` with its first signature listed twice.

        python-tuf's Metadata keeps signatures in a dict by key id and cannot
        hold the repetition, so the bytes are written by hand; the roles
        that list `role` are signed again over them (builder state is left
        as it was: later variants start from the valid repository)."""
        meta_dir = os.path.join(repo, "metadata")

        def duplicated(md: Metadata) -> bytes:
            doc = md.to_dict()
            doc["signatures"].append(copy.deepcopy(doc["signatures"][0]))
            return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")

        def write(name: str, data: bytes) -> None:
            with open(os.path.join(meta_dir, name), "wb") as f:
                f.write(data)

        if role == "root":
            root = self.roots[-1]
            write(f"{root.signed.version}.root.json", duplicated(root))
            return
        if role == "timestamp":
            write("timestamp.json", duplicated(self.timestamp))
            return
        if role == "snapshot":
            snapshot_bytes = duplicated(self.snapshot)
        else:
            md = self.role_docs[role]
            data = duplicated(md)
            write(self.meta_name(role, md.signed.version), data)
            snapshot = copy.deepcopy(self.snapshot.signed)
            snapshot.meta[f"{role}.json"] = self.meta_file_for(md.signed.version, data)
            snapshot_bytes = self._signed(snapshot, self.signers["snapshot"]).to_bytes(
                self.serializer
            )
        snapshot_version = self.snapshot.signed.version
        write(self.meta_name("snapshot", snapshot_version), snapshot_bytes)
        timestamp = copy.deepcopy(self.timestamp.signed)
        timestamp.snapshot_meta = self.meta_file_for(snapshot_version, snapshot_bytes)
        write(
            "timestamp.json",
            self._signed(timestamp, self.signers["timestamp"]).to_bytes(self.serializer),
        )

    def duplicate_keyid_roles(self) -> list[str]:
        roles = ["timestamp", "snapshot", *self.role_docs]
        if len(self.roots) > 1:
            roles.append("root")
        return roles

    def holder_file(self, repo: str) -> str:
        md = self.role_docs[self.holder]
        return os.path.join(repo, "metadata", self.meta_name(self.holder, md.signed.version))


def edit_json(path: str, edit) -> None:  # noqa: ANN001
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    edit(doc)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)


def build(case: str, out: str) -> dict:
    image = os.urandom(96 * 1024 + 7)
    expected = os.path.join(out, "expected.img")
    with open(expected, "wb") as f:
        f.write(image)
    builder = RepoBuilder(case, image)
    valid = os.path.join(out, "valid")
    builder.write(valid)
    repos = {"valid": valid}

    def variant(name: str) -> str:
        path = os.path.join(out, name)
        shutil.copytree(valid, path)
        repos[name] = path
        return path

    repo = variant("image-flipped")
    for dirpath, _, files in os.walk(os.path.join(repo, "targets")):
        for name in files:
            with open(os.path.join(dirpath, name), "r+b") as f:
                f.seek(len(image) // 2)
                byte = f.read(1)
                f.seek(len(image) // 2)
                f.write(bytes([byte[0] ^ 0x01]))

    repo = variant("targets-modified")

    def add_custom(doc: dict) -> None:
        doc["signed"]["targets"][builder.target_name]["custom"] = {"injected": "by an attacker"}

    edit_json(builder.holder_file(repo), add_custom)

    repo = variant("signature-removed")
    edit_json(builder.holder_file(repo), lambda doc: doc["signatures"].pop())

    # Threshold counts keys, not signatures: the one valid signature twice is still one.
    repo = variant("signature-duplicated")

    def duplicate_first(doc: dict) -> None:
        doc["signatures"][1] = copy.deepcopy(doc["signatures"][0])

    edit_json(builder.holder_file(repo), duplicate_first)

    for role in builder.duplicate_keyid_roles():
        builder.write_duplicated_keyid(variant(f"duplicate-keyid-{role}"), role)

    # Last: it changes the builder's timestamp.
    repo = variant("timestamp-expired")
    builder.sign_timestamp(in_days(-1))
    builder.timestamp.to_file(
        os.path.join(repo, "metadata", "timestamp.json"), JSONSerializer(compact=False)
    )

    if case in ("root-rotation", "rotation-from-expired-root"):
        repo = variant("root-new-keys-only")
        builder.root_new_keys_only.to_file(
            os.path.join(repo, "metadata", "2.root.json"), JSONSerializer(compact=False)
        )

    return {
        "target_name": builder.target_name,
        "expected": expected,
        "expected_sha256": hashlib.sha256(image).hexdigest(),
        "root": os.path.join(valid, "metadata", "1.root.json"),
        "repos": repos,
    }


class FileFetcher(FetcherInterface):
    """Serves file:// URLs to ngclient (it only speaks HTTP); missing files are 404s."""

    def _fetch(self, url: str):  # noqa: ANN202
        path = url2pathname(urlparse(url).path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DownloadHTTPError(f"{url} not found", 404) from None
        return iter([data])


def reference_verdict(repo: str, trusted_root: str, target_name: str, work: str) -> str | None:
    """What python-tuf says of a repository: None if it downloads the target
    with the right bytes, else its refusal."""
    metadata_dir = os.path.join(work, "metadata")
    download_dir = os.path.join(work, "download")
    os.makedirs(metadata_dir)
    os.makedirs(download_dir)
    with open(trusted_root, "rb") as f:
        root = f.read()
    try:
        updater = Updater(
            metadata_dir,
            pathlib.Path(repo, "metadata").as_uri() + "/",
            download_dir,
            pathlib.Path(repo, "targets").as_uri() + "/",
            fetcher=FileFetcher(),
            bootstrap=root,
        )
        updater.refresh()
        info = updater.get_targetinfo(target_name)
        if info is None:
            return "target not found"
        path = updater.download_target(info)
    except Exception as e:  # noqa: BLE001 - any refusal is the verdict
        # The cause too: a deserialization error names its reason only there.
        causes = []
        while e is not None:
            causes.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        return " <- ".join(causes)
    with open(path, "rb") as f:
        return None if f.read() == read(os.path.join(os.path.dirname(repo), "expected.img")) else "wrong bytes"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def self_check(manifest: dict, out: str) -> None:
    """python-tuf is the reference: if it does not accept `valid` and refuse
    every variant, the repository (not the client under test) is wrong."""
    for name, repo in manifest["repos"].items():
        verdict = reference_verdict(
            repo, manifest["root"], manifest["target_name"], os.path.join(out, "reference", name)
        )
        if (verdict is None) != (name == "valid"):
            raise SystemExit(f"python-tuf itself gives {name!r} the verdict {verdict or 'accepted'}")
        manifest.setdefault("reference_verdicts", {})[name] = verdict or "accepted"


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in CASES:
        print(f"usage: make_repo.py {{{','.join(CASES)}}} OUT_DIR", file=sys.stderr)
        return 2
    case, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    manifest = build(case, out)
    self_check(manifest, out)
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
