//! Attack and workflow tests over real signed repositories built here and
//! served by `FileTransport` from a temporary directory.

use super::canonical::canonicalize;
use super::*;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    RSA_PSS_SHA256,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const FUTURE: &str = "2099-01-01T00:00:00Z";
const PAST: &str = "2020-01-01T00:00:00Z";

// ---------- keys ----------

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    RsaSalt32(RsaKeyPair),
    /// RSA-PSS with the largest salt the modulus allows (as some signers do).
    RsaMaxSalt(Box<rsa::RsaPrivateKey>),
}

struct TestKey {
    id: String,
    public: Value,
    signer: Signer,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("ascii"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn with_id(public: Value, signer: Signer) -> TestKey {
    let id = hex::encode(Sha256::digest(canonicalize(&public).expect("canonical")));
    TestKey { id, public, signer }
}

fn ed25519() -> TestKey {
    let kp = Ed25519KeyPair::generate().expect("ed25519");
    let public = json!({"keytype": "ed25519", "scheme": "ed25519",
        "keyval": {"public": hex::encode(kp.public_key().as_ref())}});
    with_id(public, Signer::Ed(kp))
}

fn ecdsa() -> TestKey {
    let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("ecdsa");
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the point.
    let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    der.extend_from_slice(kp.public_key().as_ref());
    let public = json!({"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256",
        "keyval": {"public": pem("PUBLIC KEY", &der)}});
    with_id(public, Signer::Ec(kp))
}

fn rsa_key(max_salt: bool) -> TestKey {
    use rsa::pkcs8::DecodePrivateKey;
    let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let spki: PublicKeyX509Der = kp.public_key().as_der().expect("spki");
    let public = json!({"keytype": "rsa", "scheme": "rsassa-pss-sha256",
        "keyval": {"public": pem("PUBLIC KEY", spki.as_ref())}});
    let signer = if max_salt {
        let pkcs8: Pkcs8V1Der = kp.as_der().expect("pkcs8");
        Signer::RsaMaxSalt(Box::new(
            rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.as_ref()).expect("rsa parse"),
        ))
    } else {
        Signer::RsaSalt32(kp)
    };
    with_id(public, signer)
}

fn unknown_type_key() -> TestKey {
    let public = json!({"keytype": "quantum", "scheme": "magic", "keyval": {"public": "zz"}});
    with_id(
        public,
        Signer::Ed(Ed25519KeyPair::generate().expect("ed25519")),
    )
}

impl TestKey {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
            Signer::Ec(kp) => kp
                .sign(&SystemRandom::new(), msg)
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::RsaSalt32(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&RSA_PSS_SHA256, &SystemRandom::new(), msg, &mut sig)
                    .expect("sign");
                sig
            }
            Signer::RsaMaxSalt(k) => pss_sign_max_salt(k, msg),
        }
    }
}

/// EMSA-PSS-ENCODE (RFC 8017 9.1.1) with sLen = emLen - hLen - 2, then the raw private operation.
fn pss_sign_max_salt(key: &rsa::RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let em_bits = key.n().bits() - 1;
    let em_len = em_bits.div_ceil(8);
    let s_len = em_len - 32 - 2;
    let salt: Vec<u8> = (0..s_len).map(|i| (i * 7 + 3) as u8).collect();
    let mut m = Sha256::new();
    m.update([0u8; 8]);
    m.update(Sha256::digest(msg));
    m.update(&salt);
    let h = m.finalize();
    let mut db = vec![0u8; em_len - s_len - 32 - 2];
    db.push(1);
    db.extend_from_slice(&salt);
    let mut mask = Vec::new();
    let mut c = 0u32;
    while mask.len() < db.len() {
        let mut d = Sha256::new();
        d.update(h);
        d.update(c.to_be_bytes());
        mask.extend_from_slice(&d.finalize());
        c += 1;
    }
    for (b, k) in db.iter_mut().zip(&mask) {
        *b ^= k;
    }
    db[0] &= 0xff >> (8 * em_len - em_bits);
    let mut em = db;
    em.extend_from_slice(&h);
    em.push(0xbc);
    let s = rsa::BigUint::from_bytes_be(&em).modpow(key.d(), key.n());
    let mut sig = s.to_bytes_be();
    while sig.len() < key.size() {
        sig.insert(0, 0);
    }
    sig
}

fn sign_with(signed: &Value, keys: &[&TestKey]) -> Vec<u8> {
    let canonical = canonicalize(signed).expect("canonical");
    let sigs: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": k.id, "sig": hex::encode(k.sign(&canonical))}))
        .collect();
    // Pretty-printed on purpose: signatures cover the canonical form, not the bytes.
    serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": sigs})).expect("json")
}

/// `bytes` with its first signature listed once more at the end: every
/// signature still valid, the key id repeated.
fn repeat_first_signature(bytes: &[u8]) -> Vec<u8> {
    let mut doc: Value = serde_json::from_slice(bytes).expect("signed json");
    let sigs = doc["signatures"].as_array_mut().expect("signatures");
    let first = sigs[0].clone();
    sigs.push(first);
    serde_json::to_vec_pretty(&doc).expect("json")
}

fn keys_obj(keys: &[&TestKey]) -> Value {
    let mut m = serde_json::Map::new();
    for k in keys {
        m.insert(k.id.clone(), k.public.clone());
    }
    Value::Object(m)
}

fn role(keys: &[&TestKey], threshold: u32) -> Value {
    json!({"keyids": keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), "threshold": threshold})
}

fn meta_entry(version: u64, bytes: Option<&[u8]>) -> Value {
    match bytes {
        Some(b) => json!({"version": version, "length": b.len(),
            "hashes": {"sha256": hex::encode(Sha256::digest(b)), "sha512": hex::encode(Sha512::digest(b))}}),
        None => json!({"version": version}),
    }
}

fn target_entry(data: &[u8], custom: Value) -> Value {
    json!({"length": data.len(), "hashes": {"sha256": hex::encode(Sha256::digest(data)),
        "sha512": hex::encode(Sha512::digest(data))}, "custom": custom})
}

// ---------- repository ----------

struct Delegated {
    name: String,
    key: TestKey,
    targets: BTreeMap<String, Value>,
    delegations: Option<Value>,
    version: u64,
}

/// A consistent-snapshot repository under `dir/metadata` and `dir/targets`.
struct Repo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root_keys: Vec<TestKey>,
    root_threshold: u32,
    ts_key: TestKey,
    snap_key: TestKey,
    targets_key: TestKey,
    root_version: u64,
    consistent: bool,
    targets: BTreeMap<String, Value>,
    delegations: Option<Value>,
    delegated: Vec<Delegated>,
    ts_version: u64,
    snap_version: u64,
    targets_version: u64,
    ts_expires: String,
    snap_expires: String,
    targets_expires: String,
    root_expires: String,
    /// Extra fields put into every `signed` (unknown to the client).
    extra: Value,
    /// A role whose next documents list their first signature twice.
    repeat_keyid_of: Option<String>,
}

impl Repo {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("metadata")).expect("mkdir");
        std::fs::create_dir_all(dir.join("targets")).expect("mkdir");
        let mut r = Self {
            _tmp: tmp,
            dir,
            root_keys: vec![ed25519()],
            root_threshold: 1,
            ts_key: ed25519(),
            snap_key: ed25519(),
            targets_key: ed25519(),
            root_version: 0,
            consistent: true,
            targets: BTreeMap::new(),
            delegations: None,
            delegated: Vec::new(),
            ts_version: 0,
            snap_version: 0,
            targets_version: 0,
            ts_expires: FUTURE.into(),
            snap_expires: FUTURE.into(),
            targets_expires: FUTURE.into(),
            root_expires: FUTURE.into(),
            extra: json!({"x-vendor": {"note": "unknown fields are signed too"}}),
            repeat_keyid_of: None,
        };
        r.publish_root(&[]);
        r
    }

    fn meta_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// `sign_with`, plus the repetition `repeat_keyid_of` asks for.
    fn sign(&self, role: &str, signed: &Value, keys: &[&TestKey]) -> Vec<u8> {
        let bytes = sign_with(signed, keys);
        if self.repeat_keyid_of.as_deref() == Some(role) {
            repeat_first_signature(&bytes)
        } else {
            bytes
        }
    }

    fn with_extra(&self, mut v: Value) -> Value {
        if let (Some(o), Some(extra)) = (v.as_object_mut(), self.extra.as_object()) {
            for (k, x) in extra {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    fn root_signed(&self) -> Value {
        let keys: Vec<&TestKey> = self
            .root_keys
            .iter()
            .chain([&self.ts_key, &self.snap_key, &self.targets_key])
            .collect();
        let root_keys: Vec<&TestKey> = self.root_keys.iter().collect();
        self.with_extra(json!({
            "_type": "root", "spec_version": "1.0.34", "version": self.root_version,
            "expires": self.root_expires, "consistent_snapshot": self.consistent,
            "keys": keys_obj(&keys),
            "roles": {
                "root": role(&root_keys, self.root_threshold),
                "timestamp": role(&[&self.ts_key], 1),
                "snapshot": role(&[&self.snap_key], 1),
                "targets": role(&[&self.targets_key], 1),
            }
        }))
    }

    /// Signs and writes the next root version with the current keys plus
    /// `old_signers` (the previous root keys, for a rotation).
    fn publish_root(&mut self, old_signers: &[&TestKey]) -> Vec<u8> {
        self.root_version += 1;
        let signed = self.root_signed();
        let mut signers: Vec<&TestKey> = self.root_keys.iter().collect();
        signers.extend_from_slice(old_signers);
        let bytes = self.sign("root", &signed, &signers);
        self.write_meta(&format!("{}.root.json", self.root_version), &bytes);
        bytes
    }

    fn root_bytes(&self, version: u64) -> Vec<u8> {
        std::fs::read(self.meta_dir().join(format!("{version}.root.json"))).expect("root")
    }

    fn write_meta(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.meta_dir().join(name), bytes).expect("write meta");
    }

    fn read_meta(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.meta_dir().join(name)).expect("read meta")
    }

    fn add_target(&mut self, name: &str, data: &[u8]) {
        self.targets.insert(
            name.to_owned(),
            target_entry(data, json!({"version": "1.0.0", "hardware_ids": ["hw"]})),
        );
        self.write_target(name, data);
    }

    fn write_target(&self, name: &str, data: &[u8]) {
        let (dir, base) = match name.rsplit_once('/') {
            Some((d, b)) => (self.dir.join("targets").join(d), b.to_owned()),
            None => (self.dir.join("targets"), name.to_owned()),
        };
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = if self.consistent {
            format!("{}.{base}", hex::encode(Sha256::digest(data)))
        } else {
            base
        };
        std::fs::write(dir.join(file), data).expect("write target");
    }

    fn meta_name(&self, role: &str, version: u64) -> String {
        if self.consistent {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    fn targets_signed(
        &self,
        version: u64,
        expires: &str,
        targets: &BTreeMap<String, Value>,
        delegations: &Option<Value>,
    ) -> Value {
        let mut t = json!({"_type": "targets", "spec_version": "1.0.34", "version": version,
            "expires": expires, "targets": targets});
        if let Some(d) = delegations {
            t["delegations"] = d.clone();
        }
        self.with_extra(t)
    }

    /// Signs new targets (and delegated roles), snapshot and timestamp versions.
    fn publish(&mut self) {
        self.targets_version += 1;
        let t = self.targets_signed(
            self.targets_version,
            &self.targets_expires.clone(),
            &self.targets,
            &self.delegations,
        );
        let targets_bytes = self.sign("targets", &t, &[&self.targets_key]);
        self.write_meta(
            &self.meta_name("targets", self.targets_version),
            &targets_bytes,
        );
        let mut meta = serde_json::Map::new();
        meta.insert(
            "targets.json".into(),
            meta_entry(self.targets_version, Some(&targets_bytes)),
        );
        for i in 0..self.delegated.len() {
            self.delegated[i].version += 1;
            let d = &self.delegated[i];
            let signed = self.targets_signed(d.version, FUTURE, &d.targets, &d.delegations);
            let bytes = self.sign(&d.name, &signed, &[&d.key]);
            self.write_meta(&self.meta_name(&d.name, d.version), &bytes);
            // Delegated roles listed by version only, as many repositories do.
            meta.insert(format!("{}.json", d.name), meta_entry(d.version, None));
        }
        self.snap_version += 1;
        let s = self.with_extra(json!({"_type": "snapshot", "spec_version": "1.0.34",
            "version": self.snap_version, "expires": self.snap_expires, "meta": meta}));
        let snap_bytes = self.sign("snapshot", &s, &[&self.snap_key]);
        self.write_meta(&self.meta_name("snapshot", self.snap_version), &snap_bytes);
        self.publish_timestamp(&snap_bytes);
    }

    fn publish_timestamp(&mut self, snap_bytes: &[u8]) {
        self.ts_version += 1;
        let ts = self.with_extra(json!({"_type": "timestamp", "spec_version": "1.0.34",
            "version": self.ts_version, "expires": self.ts_expires,
            "meta": {"snapshot.json": meta_entry(self.snap_version, Some(snap_bytes))}}));
        let bytes = self.sign("timestamp", &ts, &[&self.ts_key]);
        self.write_meta("timestamp.json", &bytes);
    }

    fn options(&self) -> ClientOptions {
        ClientOptions::new(
            Url::from_directory_path(self.meta_dir()).expect("url"),
            Url::from_directory_path(self.dir.join("targets")).expect("url"),
        )
    }

    /// A client initialized with version 1 of the root.
    fn client(&self) -> (tempfile::TempDir, TufClient<FileTransport>) {
        let state = tempfile::tempdir().expect("tempdir");
        TufClient::<FileTransport>::init(state.path(), &self.root_bytes(1)).expect("init");
        let c = TufClient::open(state.path(), self.options(), FileTransport).expect("open");
        (state, c)
    }

    fn recording_client(
        &self,
    ) -> (
        tempfile::TempDir,
        TufClient<Recording>,
        Arc<Mutex<Vec<String>>>,
    ) {
        let state = tempfile::tempdir().expect("tempdir");
        TufClient::<FileTransport>::init(state.path(), &self.root_bytes(1)).expect("init");
        let log = Arc::new(Mutex::new(Vec::new()));
        let t = Recording { log: log.clone() };
        let c = TufClient::open(state.path(), self.options(), t).expect("open");
        (state, c, log)
    }
}

/// FileTransport plus a request log and ETag/304 handling like the server's.
struct Recording {
    log: Arc<Mutex<Vec<String>>>,
}

impl Transport for Recording {
    fn fetch(
        &self,
        url: &Url,
        max_len: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, FetchError> {
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("")
            .to_owned();
        self.log.lock().expect("log").push(match if_none_match {
            Some(e) => format!("{name} if-none-match {e}"),
            None => name,
        });
        match FileTransport.fetch(url, max_len, None)? {
            Fetched::Body { bytes, .. } => {
                let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
                if if_none_match == Some(etag.as_str()) {
                    return Ok(Fetched::NotModified);
                }
                Ok(Fetched::Body {
                    bytes,
                    etag: Some(etag),
                })
            }
            Fetched::NotModified => Ok(Fetched::NotModified),
        }
    }

    fn fetch_stream(
        &self,
        url: &Url,
        offset: u64,
    ) -> Result<Box<dyn std::io::Read + Send>, FetchError> {
        FileTransport.fetch_stream(url, offset)
    }
}

fn taken(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().expect("log"))
}

fn json_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

fn basic_repo() -> Repo {
    let mut repo = Repo::new();
    repo.add_target("board/image-1.img", b"image one contents");
    repo.publish();
    repo
}

// ---------- the workflow ----------

#[test]
fn refresh_find_and_download_then_idle() {
    let repo = basic_repo();
    let (state, mut c) = repo.client();
    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Updated);
    assert_eq!(
        json_files(state.path()),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    // Stored as the exact bytes received.
    assert_eq!(
        std::fs::read(state.path().join("timestamp.json")).expect("read"),
        repo.read_meta("timestamp.json")
    );
    assert_eq!(
        std::fs::read(state.path().join("snapshot.json")).expect("read"),
        repo.read_meta("1.snapshot.json")
    );
    assert!(state.path().join("trusted-time").exists());

    let all = c.top_level_targets().expect("targets");
    assert_eq!(all.len(), 1);
    let t = c
        .find_target("board/image-1.img")
        .expect("find")
        .expect("listed");
    assert_eq!(t.length, 18);
    assert_eq!(
        t.release().expect("release").version,
        semver::Version::new(1, 0, 0)
    );
    let url = c.target_url(&t).expect("url");
    assert!(url.path().ends_with(&format!(
        "/targets/board/{}.image-1.img",
        hex::encode(Sha256::digest(b"image one contents"))
    )));
    assert!(c.find_target("board/missing.img").expect("find").is_none());

    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    c.download_target(&t, &dest).expect("download");
    assert_eq!(std::fs::read(&dest).expect("read"), b"image one contents");
    // Present and matching: nothing fetched (the repository copy is gone).
    std::fs::remove_dir_all(repo.dir.join("targets")).expect("rm");
    c.download_target(&t, &dest).expect("already there");

    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Unchanged);
    let view = c.trusted();
    assert_eq!(
        (
            view.root.version,
            view.timestamp.as_ref().map(|t| t.version)
        ),
        (1, Some(1))
    );

    // Reopening loads the stored state without network.
    drop(c);
    let c = TufClient::open(state.path(), repo.options(), FileTransport).expect("reopen");
    assert_eq!(c.trusted().targets.as_ref().map(|t| t.version), Some(1));
}

#[test]
fn idle_poll_is_a_root_probe_and_one_conditional_timestamp_request() {
    let mut repo = basic_repo();
    let (_state, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    assert_eq!(
        taken(&log),
        [
            "2.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json"
        ]
    );
    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Unchanged);
    let etag = format!(
        "\"{}\"",
        hex::encode(Sha256::digest(repo.read_meta("timestamp.json")))
    );
    assert_eq!(
        taken(&log),
        [
            "2.root.json".to_owned(),
            format!("timestamp.json if-none-match {etag}")
        ]
    );
    // A new release is picked up.
    repo.add_target("board/image-2.img", b"two");
    repo.publish();
    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Updated);
    assert_eq!(taken(&log).len(), 4);
    assert!(c.find_target("board/image-2.img").expect("find").is_some());
}

#[test]
fn same_timestamp_version_stops_without_fetching_snapshot() {
    let repo = basic_repo();
    let (_state, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    taken(&log);
    // Without an etag (a server that ignores If-None-Match) the body comes
    // back, has the trusted version, and the refresh stops there.
    std::fs::remove_file(_state.path().join("timestamp.etag")).expect("rm etag");
    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Unchanged);
    assert_eq!(taken(&log), ["2.root.json", "timestamp.json"]);
}

#[test]
fn non_consistent_repository_uses_plain_names() {
    let mut repo = Repo::new();
    repo.consistent = false;
    repo.root_version = 0;
    repo.publish_root(&[]);
    repo.add_target("a.img", b"aaa");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let t = c.find_target("a.img").expect("find").expect("listed");
    assert!(c
        .target_url(&t)
        .expect("url")
        .path()
        .ends_with("/targets/a.img"));
    let out = tempfile::tempdir().expect("tempdir");
    c.download_target(&t, &out.path().join("a"))
        .expect("download");
}

#[test]
fn sha512_only_targets_are_accepted_and_named_by_sha512() {
    let mut repo = Repo::new();
    let data = b"only sha512";
    repo.targets.insert(
        "x.img".into(),
        json!({"length": data.len(),
        "hashes": {"sha512": hex::encode(Sha512::digest(data))}}),
    );
    let dir = repo.dir.join("targets");
    std::fs::write(
        dir.join(format!("{}.x.img", hex::encode(Sha512::digest(data)))),
        data,
    )
    .expect("write");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let t = c.find_target("x.img").expect("find").expect("listed");
    let out = tempfile::tempdir().expect("tempdir");
    c.download_target(&t, &out.path().join("x"))
        .expect("download");
    assert!(t.release().is_err(), "no release fields on this target");
}

// ---------- attacks ----------

#[test]
fn arbitrary_software_is_refused_and_nothing_is_left() {
    let repo = basic_repo();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let t = c
        .find_target("board/image-1.img")
        .expect("find")
        .expect("listed");
    repo.write_target("board/image-1.img", b"image one contentz"); // same path, evil bytes
    std::fs::write(
        repo.dir.join("targets/board").join(format!(
            "{}.image-1.img",
            hex::encode(Sha256::digest(b"image one contents"))
        )),
        b"image one contentz",
    )
    .expect("tamper");
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("image");
    let err = c.download_target(&t, &dest).expect_err("tampered");
    assert!(matches!(err, TufError::TargetVerify { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(out.path()).expect("readdir").count(),
        0,
        "no partial file left"
    );
}

#[test]
fn endless_data_is_cut_off() {
    let repo = basic_repo();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let t = c
        .find_target("board/image-1.img")
        .expect("find")
        .expect("listed");
    let path = repo.dir.join("targets/board").join(format!(
        "{}.image-1.img",
        hex::encode(Sha256::digest(b"image one contents"))
    ));
    std::fs::write(&path, vec![b'x'; 1 << 20]).expect("grow");
    let out = tempfile::tempdir().expect("tempdir");
    let err = c
        .download_target(&t, &out.path().join("i"))
        .expect_err("too long");
    assert!(
        matches!(
            err,
            TufError::TargetVerify {
                error: crate::hash::VerifyError::TooLong { .. },
                ..
            }
        ),
        "{err}"
    );

    // Metadata: an oversized timestamp is refused before it is stored.
    let mut options = repo.options();
    options.limits.timestamp = 100;
    let state = tempfile::tempdir().expect("tempdir");
    TufClient::<FileTransport>::init(state.path(), &repo.root_bytes(1)).expect("init");
    let mut c = TufClient::open(state.path(), options, FileTransport).expect("open");
    let err = c.refresh().expect_err("too large");
    assert!(
        matches!(
            err,
            TufError::Fetch {
                error: FetchError::TooLarge { limit: 100 },
                ..
            }
        ),
        "{err}"
    );
    assert!(!state.path().join("timestamp.json").exists());
}

#[test]
fn snapshot_longer_than_signed_length_is_too_large() {
    let repo = basic_repo();
    let mut snap = repo.read_meta("1.snapshot.json");
    snap.extend_from_slice(b"          ");
    repo.write_meta("1.snapshot.json", &snap);
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("too large");
    assert!(
        matches!(
            err,
            TufError::Fetch {
                error: FetchError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn timestamp_rollback_is_refused() {
    let mut repo = basic_repo();
    let old = repo.read_meta("timestamp.json");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    repo.write_meta("timestamp.json", &old);
    let err = c.refresh().expect_err("rollback");
    assert!(
        matches!(err, TufError::Rollback { ref role, trusted: 2, new: 1 } if role == "timestamp"),
        "{err}"
    );
}

#[test]
fn snapshot_version_rollback_in_timestamp_is_refused() {
    let mut repo = basic_repo();
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    // A new timestamp pointing at the older snapshot.
    repo.snap_version = 1;
    let old_snap = repo.read_meta("1.snapshot.json");
    repo.publish_timestamp(&old_snap);
    let err = c.refresh().expect_err("rollback");
    assert!(
        matches!(err, TufError::Rollback { ref role, trusted: 2, new: 1 } if role == "snapshot"),
        "{err}"
    );
}

#[test]
fn targets_rollback_in_snapshot_is_refused() {
    let mut repo = basic_repo();
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    // Snapshot 3 lists targets version 1 again.
    repo.targets_version = 0;
    repo.publish();
    let err = c.refresh().expect_err("rollback");
    assert!(
        matches!(err, TufError::Rollback { ref role, trusted: 2, new: 1 } if role == "targets"),
        "{err}"
    );
}

#[test]
fn role_removed_from_snapshot_is_refused() {
    let mut repo = delegating_repo();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    repo.delegated.clear();
    repo.delegations = None;
    repo.publish();
    let err = c.refresh().expect_err("removed");
    assert!(matches!(err, TufError::RoleRemoved { .. }), "{err}");
}

#[test]
fn root_rollback_and_wrong_version_are_refused() {
    let mut repo = basic_repo();
    // 2.root.json that says version 1.
    repo.root_version = 0;
    let v1 = repo.publish_root(&[]);
    repo.write_meta("2.root.json", &v1);
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("rollback");
    assert!(
        matches!(err, TufError::Rollback { ref role, trusted: 1, new: 1 } if role == "root"),
        "{err}"
    );
}

fn expect_expired(err: TufError, want: &str) {
    assert!(
        matches!(err, TufError::Expired { ref role, .. } if role == want),
        "{err}"
    );
}

#[test]
fn freeze_attacks_are_refused() {
    // Expired timestamp.
    let mut repo = Repo::new();
    repo.ts_expires = PAST.into();
    repo.publish();
    let (_s, mut c) = repo.client();
    expect_expired(c.refresh().expect_err("expired"), "timestamp");

    let mut repo = Repo::new();
    repo.snap_expires = PAST.into();
    repo.publish();
    let (_s, mut c) = repo.client();
    expect_expired(c.refresh().expect_err("expired"), "snapshot");

    let mut repo = Repo::new();
    repo.targets_expires = PAST.into();
    repo.publish();
    let (_s, mut c) = repo.client();
    expect_expired(c.refresh().expect_err("expired"), "targets");

    let mut repo = Repo::new();
    repo.root_expires = PAST.into();
    repo.root_version = 0;
    repo.publish_root(&[]);
    repo.publish();
    let (_s, mut c) = repo.client();
    expect_expired(c.refresh().expect_err("expired"), "root");
}

#[test]
fn frozen_repository_is_refused_once_metadata_expires() {
    // The same (unchanged) timestamp keeps being served after it expired:
    // simulated by a trusted time past its expiry.
    let repo = basic_repo();
    let (state, mut c) = repo.client();
    c.refresh().expect("refresh");
    drop(c);
    std::fs::write(state.path().join("trusted-time"), "2100-01-01T00:00:00Z").expect("write");
    let mut c = TufClient::open(state.path(), repo.options(), FileTransport)
        .expect("open never checks expiry");
    let err = c.refresh().expect_err("frozen");
    assert!(matches!(err, TufError::Expired { .. }), "{err}");
}

#[test]
fn mix_and_match_is_refused() {
    // A snapshot that is validly signed but not the one the timestamp hashes.
    let mut repo = basic_repo();
    let ts = repo.read_meta("timestamp.json");
    repo.snap_version = 0;
    repo.ts_version = 0;
    // Same lengths everywhere, other content: only the hashes tell.
    repo.targets_version = 0;
    repo.add_target("board/image-1.img", b"image one contentz");
    repo.publish();
    repo.write_meta("timestamp.json", &ts);
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("mix");
    assert!(
        matches!(
            err,
            TufError::HashMismatch {
                algorithm: "sha256",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn targets_version_must_match_snapshot_listing() {
    let mut repo = basic_repo();
    repo.publish();
    // Serve targets v2's bytes under the v2 name but a snapshot listing v2 by
    // version only while the file says version 1.
    let t1 = repo.read_meta("1.targets.json");
    repo.write_meta("2.targets.json", &t1);
    let snap = json!({"_type": "snapshot", "spec_version": "1.0.34", "version": 2, "expires": FUTURE,
        "meta": {"targets.json": {"version": 2}}});
    let snap_bytes = sign_with(&snap, &[&repo.snap_key]);
    repo.write_meta("2.snapshot.json", &snap_bytes);
    repo.snap_version = 2;
    repo.ts_version = 1;
    repo.publish_timestamp(&snap_bytes);
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("mismatch");
    assert!(
        matches!(err, TufError::VersionMismatch { ref role, expected: 2, got: 1 } if role == "targets"),
        "{err}"
    );
}

#[test]
fn fast_forward_attack_is_recovered_by_rotating_the_timestamp_key() {
    let mut repo = basic_repo();
    let (state, mut c) = repo.client();
    c.refresh().expect("refresh");
    // The attacker, holding the timestamp key, serves version 1000.
    repo.ts_version = 999;
    let snap = repo.read_meta("1.snapshot.json");
    repo.publish_timestamp(&snap);
    c.refresh().expect("fast-forwarded");
    assert_eq!(
        c.trusted().timestamp.as_ref().map(|t| t.version),
        Some(1000)
    );
    // The repository rotates the timestamp key and restarts at version 3.
    let old_root = std::mem::take(&mut repo.root_keys);
    repo.root_keys = vec![ed25519()];
    repo.ts_key = ed25519();
    repo.publish_root(&old_root.iter().collect::<Vec<_>>());
    repo.ts_version = 2;
    repo.publish();
    assert_eq!(c.refresh().expect("recovered"), RefreshOutcome::Updated);
    assert_eq!(c.trusted().root.version, 2);
    assert_eq!(c.trusted().timestamp.as_ref().map(|t| t.version), Some(3));
    assert_eq!(
        std::fs::read(state.path().join("root.json")).expect("root"),
        repo.root_bytes(2)
    );
}

#[test]
fn root_chain_is_walked_one_version_at_a_time_and_persisted() {
    let mut repo = basic_repo();
    for _ in 0..3 {
        let old = std::mem::take(&mut repo.root_keys);
        repo.root_keys = vec![ecdsa(), ed25519()];
        repo.root_threshold = 2;
        repo.publish_root(&old.iter().collect::<Vec<_>>());
    }
    let (state, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    assert_eq!(c.trusted().root.version, 4);
    assert_eq!(
        &taken(&log)[..4],
        ["2.root.json", "3.root.json", "4.root.json", "5.root.json"]
    );
    assert_eq!(
        std::fs::read(state.path().join("root.json")).expect("root"),
        repo.root_bytes(4)
    );

    // The number of rotations followed in one refresh is bounded.
    let mut options = repo.options();
    options.max_root_rotations = 2;
    let state = tempfile::tempdir().expect("tempdir");
    TufClient::<FileTransport>::init(state.path(), &repo.root_bytes(1)).expect("init");
    let mut c = TufClient::open(state.path(), options, FileTransport).expect("open");
    c.refresh().expect("refresh");
    assert_eq!(c.trusted().root.version, 3);
}

#[test]
fn new_root_must_be_signed_by_old_and_new_keys() {
    // Only the new keys sign: the old root does not vouch for it.
    let mut repo = basic_repo();
    repo.root_keys = vec![ed25519()];
    repo.publish_root(&[]);
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("unvouched");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, valid: 0, threshold: 1 } if role == "root"),
        "{err}"
    );

    // Only the old keys sign: the new root is not signed by its own threshold.
    let mut repo = basic_repo();
    let old = std::mem::take(&mut repo.root_keys);
    repo.root_keys = vec![ed25519()];
    let signed = {
        repo.root_version += 1;
        repo.root_signed()
    };
    repo.write_meta("2.root.json", &sign_with(&signed, &[&old[0]]));
    let (_s, mut c) = repo.client();
    let err = c.refresh().expect_err("not self-signed");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, valid: 0, .. } if role == "root"),
        "{err}"
    );
}

#[test]
fn key_revoked_by_root_rotation_no_longer_counts() {
    let mut repo = basic_repo();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let compromised = std::mem::replace(&mut repo.targets_key, ed25519());
    let old = std::mem::take(&mut repo.root_keys);
    repo.root_keys = vec![ed25519()];
    repo.publish_root(&old.iter().collect::<Vec<_>>());
    // Attacker signs new targets with the revoked key.
    repo.targets_key = compromised;
    repo.publish();
    let err = c.refresh().expect_err("revoked");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, valid: 0, .. } if role == "targets"),
        "{err}"
    );
}

fn expect_repeated_keyid(err: TufError, want_role: &str, want_keyid: &str) {
    assert!(
        matches!(err, TufError::DuplicateSignature { ref role, ref keyid } if role == want_role && keyid == want_keyid),
        "{err}"
    );
    assert!(
        err.to_string().contains("appears more than once"),
        "the message says what is wrong: {err}"
    );
}

/// Spec 4.2: a key id is unique within `signatures`. The threshold is met in
/// every case below (each signature is valid), so only the repetition refuses.
#[test]
fn a_key_id_signing_twice_is_refused_for_every_top_level_role() {
    for role in ["timestamp", "snapshot", "targets"] {
        let mut repo = basic_repo();
        let (state, mut c) = repo.client();
        c.refresh().expect("refresh");
        repo.add_target("next.img", b"next release");
        repo.repeat_keyid_of = Some(role.to_owned());
        repo.publish();
        let keyid = match role {
            "timestamp" => repo.ts_key.id.clone(),
            "snapshot" => repo.snap_key.id.clone(),
            _ => repo.targets_key.id.clone(),
        };
        let err = c.refresh().expect_err("repeated key id");
        expect_repeated_keyid(err, role, &keyid);
        // Nothing of the refused document is trusted, now or after a restart.
        drop(c);
        let mut c = TufClient::open(state.path(), repo.options(), FileTransport).expect("open");
        assert!(
            c.find_target("next.img").expect("find").is_none(),
            "{role}: the refused release is not trusted"
        );
    }
}

#[test]
fn a_key_id_signing_twice_is_refused_even_if_the_repeat_is_garbage() {
    let mut repo = basic_repo();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    repo.publish();
    let mut doc: Value = serde_json::from_slice(&repo.read_meta("timestamp.json")).expect("json");
    let sigs = doc["signatures"].as_array_mut().expect("signatures");
    let mut repeat = sigs[0].clone();
    repeat["sig"] = json!("00".repeat(64));
    sigs.push(repeat);
    repo.write_meta("timestamp.json", &serde_json::to_vec(&doc).expect("json"));
    let err = c.refresh().expect_err("repeated key id");
    expect_repeated_keyid(err, "timestamp", &repo.ts_key.id);
}

#[test]
fn a_root_rotation_with_a_key_id_signing_twice_is_refused() {
    let mut repo = basic_repo();
    let (state, mut c) = repo.client();
    c.refresh().expect("refresh");
    let old = std::mem::take(&mut repo.root_keys);
    repo.root_keys = vec![ed25519()];
    // 2.root signed by the new key and the old one, the new key's signature repeated.
    repo.repeat_keyid_of = Some("root".into());
    repo.publish_root(&old.iter().collect::<Vec<_>>());
    let new_key = repo.root_keys[0].id.clone();
    let err = c.refresh().expect_err("repeated key id in the new root");
    expect_repeated_keyid(err, "root", &new_key);
    drop(c);
    let root = std::fs::read(state.path().join("root.json")).expect("trusted root");
    let root: Value = serde_json::from_slice(&root).expect("json");
    assert_eq!(
        root["signed"]["version"], 1,
        "the trusted root stays version 1"
    );
}

#[test]
fn a_trusted_root_with_a_key_id_signing_twice_is_not_provisioned() {
    let repo = basic_repo();
    let bytes = repeat_first_signature(&repo.root_bytes(1));
    let state = tempfile::tempdir().expect("tempdir");
    let err = TufClient::<FileTransport>::init(state.path(), &bytes).expect_err("refused");
    expect_repeated_keyid(err, "root", &repo.root_keys[0].id);
    assert!(
        !state.path().join("root.json").exists(),
        "nothing is provisioned"
    );
}

#[test]
fn a_delegated_role_with_a_key_id_signing_twice_is_refused() {
    let mut repo = delegating_repo();
    repo.repeat_keyid_of = Some("a".into());
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("top-level roles are fine");
    let err = c
        .find_target("a/one.img")
        .expect_err("repeated key id in a");
    let keyid = repo.delegated[0].key.id.clone();
    expect_repeated_keyid(err, "a", &keyid);
}

#[test]
fn a_role_listing_a_key_id_twice_still_counts_it_once() {
    // Not the signatures array but the delegator's keyids: counted as a set.
    let repo = basic_repo();
    let mut root = repo.root_signed();
    root["roles"]["timestamp"]["threshold"] = json!(2);
    root["roles"]["timestamp"]["keyids"] = json!([repo.ts_key.id, repo.ts_key.id]);
    let root_keys: Vec<&TestKey> = repo.root_keys.iter().collect();
    let bytes = sign_with(&root, &root_keys);
    let state = tempfile::tempdir().expect("tempdir");
    TufClient::<FileTransport>::init(state.path(), &bytes).expect("init");
    let ts = json!({"_type": "timestamp", "spec_version": "1.0.34", "version": 5, "expires": FUTURE,
        "meta": {"snapshot.json": {"version": 1}}});
    repo.write_meta("timestamp.json", &sign_with(&ts, &[&repo.ts_key]));
    let mut c = TufClient::open(state.path(), repo.options(), FileTransport).expect("open");
    let err = c.refresh().expect_err("threshold");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, valid: 1, threshold: 2 } if role == "timestamp"),
        "{err}"
    );
}

#[test]
fn malformed_and_wrong_type_metadata_are_refused() {
    let repo = basic_repo();
    let (state, mut c) = repo.client();
    repo.write_meta("timestamp.json", b"{\"signed\": not json");
    assert!(matches!(
        c.refresh().expect_err("malformed"),
        TufError::Malformed { .. }
    ));
    repo.write_meta("timestamp.json", &repo.read_meta("1.snapshot.json"));
    let err = c.refresh().expect_err("wrong type");
    assert!(
        matches!(err, TufError::WrongType { ref expected, ref found, .. } if expected == "timestamp" && found == "snapshot"),
        "{err}"
    );
    assert!(!state.path().join("timestamp.json").exists());
    assert!(
        TufClient::<FileTransport>::init(state.path(), &repo.read_meta("1.targets.json")).is_err()
    );
}

#[test]
fn unsupported_spec_version_is_refused() {
    let mut repo = basic_repo();
    let mut root = repo.root_signed();
    root["version"] = json!(2);
    root["spec_version"] = json!("2.0.0");
    let keys: Vec<&TestKey> = repo.root_keys.iter().collect();
    repo.write_meta("2.root.json", &sign_with(&root, &keys));
    repo.root_version = 2;
    let (_s, mut c) = repo.client();
    assert!(matches!(
        c.refresh().expect_err("spec"),
        TufError::UnsupportedSpecVersion { .. }
    ));
}

#[test]
fn unknown_key_types_are_ignored_not_fatal() {
    let mut repo = Repo::new();
    let strange = unknown_type_key();
    // Root threshold 1 with a strange key listed besides the real one.
    let mut root = repo.root_signed();
    root["keys"][strange.id.clone()] = strange.public.clone();
    root["roles"]["timestamp"]["keyids"] = json!([strange.id, repo.ts_key.id]);
    let signed = sign_with(&root, &repo.root_keys.iter().collect::<Vec<_>>());
    repo.write_meta("1.root.json", &signed);
    repo.add_target("a.img", b"a");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh()
        .expect("refresh with an unknown key type listed");

    // Only the strange key: nothing can meet the threshold, and nothing panics.
    root["roles"]["timestamp"]["keyids"] = json!([strange.id]);
    let signed = sign_with(&root, &repo.root_keys.iter().collect::<Vec<_>>());
    repo.write_meta("1.root.json", &signed);
    let (_s, mut c) = repo.client();
    assert!(matches!(
        c.refresh().expect_err("threshold"),
        TufError::ThresholdNotMet { .. }
    ));
}

#[test]
fn rsa_pss_with_salt_32_and_max_salt_and_ecdsa_verify() {
    let mut repo = Repo::new();
    repo.ts_key = rsa_key(false);
    repo.snap_key = rsa_key(true);
    repo.targets_key = ecdsa();
    repo.root_version = 0;
    repo.publish_root(&[]);
    repo.add_target("a.img", b"a");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    assert!(c.find_target("a.img").expect("find").is_some());

    // A bit flipped in an RSA signature does not verify.
    let mut ts: Value = serde_json::from_slice(&repo.read_meta("timestamp.json")).expect("json");
    let sig = ts["signatures"][0]["sig"].as_str().expect("sig").to_owned();
    let mut raw = hex::decode(sig).expect("hex");
    raw[10] ^= 1;
    ts["signatures"][0]["sig"] = json!(hex::encode(raw));
    ts["signed"]["version"] = json!(9);
    repo.write_meta("timestamp.json", &serde_json::to_vec(&ts).expect("json"));
    assert!(matches!(
        c.refresh().expect_err("bad sig"),
        TufError::ThresholdNotMet { .. }
    ));
}

#[test]
fn signatures_cover_unknown_fields() {
    let repo = basic_repo();
    let (_s, mut c) = repo.client();
    // Changing an unknown field after signing breaks the signature.
    let mut ts: Value = serde_json::from_slice(&repo.read_meta("timestamp.json")).expect("json");
    ts["signed"]["x-vendor"]["note"] = json!("changed");
    repo.write_meta("timestamp.json", &serde_json::to_vec(&ts).expect("json"));
    assert!(matches!(
        c.refresh().expect_err("sig"),
        TufError::ThresholdNotMet { .. }
    ));
}

#[test]
fn corrupt_optional_state_is_dropped_on_open() {
    let repo = basic_repo();
    let (state, mut c) = repo.client();
    c.refresh().expect("refresh");
    drop(c);
    std::fs::write(state.path().join("snapshot.json"), b"garbage").expect("corrupt");
    let mut c = TufClient::open(state.path(), repo.options(), FileTransport).expect("open");
    assert!(c.trusted().snapshot.is_none());
    assert!(!state.path().join("snapshot.json").exists());
    // The next refresh restores it (same timestamp, but incomplete state).
    c.refresh().expect("refresh");
    assert!(c.trusted().snapshot.is_some());

    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        TufClient::open(empty.path(), repo.options(), FileTransport).expect_err("no root"),
        TufError::NoTrustedRoot { .. }
    ));
}

// ---------- delegations ----------

fn delegation(name: &str, key: &TestKey, paths: Value, terminating: bool) -> Value {
    let mut d =
        json!({"name": name, "keyids": [key.id], "threshold": 1, "terminating": terminating});
    if paths.is_array() {
        d["paths"] = paths;
    } else {
        d["path_hash_prefixes"] = paths["prefixes"].clone();
    }
    d
}

/// targets -> [a (paths a/*), b (paths *), c (terminating, a/x.img)]...
fn delegating_repo() -> Repo {
    let mut repo = Repo::new();
    let ka = ed25519();
    let kb = ed25519();
    repo.delegations = Some(json!({
        "keys": keys_obj(&[&ka, &kb]),
        "roles": [delegation("a", &ka, json!(["a/*"]), false), delegation("b", &kb, json!(["*", "a/*"]), false)],
    }));
    let mut a_targets = BTreeMap::new();
    a_targets.insert(
        "a/one.img".to_owned(),
        target_entry(b"one from a", Value::Null),
    );
    // Listed by a but outside a's paths: a simply does not provide it.
    a_targets.insert(
        "elsewhere.img".to_owned(),
        target_entry(b"sneaky", Value::Null),
    );
    let mut b_targets = BTreeMap::new();
    b_targets.insert(
        "a/one.img".to_owned(),
        target_entry(b"one from b", Value::Null),
    );
    b_targets.insert(
        "a/two.img".to_owned(),
        target_entry(b"two from b", Value::Null),
    );
    b_targets.insert(
        "elsewhere.img".to_owned(),
        target_entry(b"honest", Value::Null),
    );
    repo.delegated.push(Delegated {
        name: "a".into(),
        key: ka,
        targets: a_targets,
        delegations: None,
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "b".into(),
        key: kb,
        targets: b_targets,
        delegations: None,
        version: 0,
    });
    repo.publish();
    repo
}

#[test]
fn delegation_search_is_preorder_and_fetches_only_what_it_needs() {
    let repo = delegating_repo();
    let (state, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    taken(&log);
    let t = c.find_target("a/one.img").expect("find").expect("listed");
    assert_eq!(t.length, 10);
    assert_eq!(
        t.digests.sha256,
        Some(Sha256::digest(b"one from a").into()),
        "first matching role wins"
    );
    assert_eq!(taken(&log), ["1.a.json"]);
    let t = c
        .find_target("elsewhere.img")
        .expect("find")
        .expect("listed");
    assert_eq!(t.digests.sha256, Some(Sha256::digest(b"honest").into()));
    assert_eq!(taken(&log), ["1.b.json"]);
    assert!(json_files(state.path()).contains(&"a.json".to_owned()));
    // b matches a/*, a is consulted first and lacks it: falls through to b.
    let t = c.find_target("a/two.img").expect("find").expect("listed");
    assert_eq!(t.length, 10);
    assert!(taken(&log).is_empty(), "verified roles are reused");
    // Stored delegated metadata is reused by a new client when still current.
    drop(c);
    let mut c = TufClient::open(state.path(), repo.options(), FileTransport).expect("open");
    assert!(c.find_target("a/two.img").expect("find").is_some());
}

#[test]
fn terminating_delegation_stops_the_search() {
    let mut repo = delegating_repo();
    let kc = ed25519();
    let mut d = repo.delegations.take().expect("delegations");
    d["keys"][kc.id.clone()] = kc.public.clone();
    let roles = d["roles"].as_array_mut().expect("roles");
    roles.insert(0, delegation("c", &kc, json!(["a/two.img"]), true));
    repo.delegations = Some(d);
    repo.delegated.push(Delegated {
        name: "c".into(),
        key: kc,
        targets: BTreeMap::new(),
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    assert!(
        c.find_target("a/two.img").expect("find").is_none(),
        "c is terminating and lacks it"
    );
    assert!(
        c.find_target("a/one.img").expect("find").is_some(),
        "c does not match a/one.img"
    );
}

#[test]
fn delegation_cycle_terminates_and_cap_is_honoured() {
    let mut repo = Repo::new();
    let ka = ed25519();
    let kb = ed25519();
    let keys = keys_obj(&[&ka, &kb]);
    let to_a = json!({"keys": keys, "roles": [delegation("a", &ka, json!(["*"]), false)]});
    let to_b = json!({"keys": keys, "roles": [delegation("b", &kb, json!(["*"]), false)]});
    repo.delegations = Some(to_a.clone());
    repo.delegated.push(Delegated {
        name: "a".into(),
        key: ka,
        targets: BTreeMap::new(),
        delegations: Some(to_b),
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "b".into(),
        key: kb,
        targets: BTreeMap::new(),
        delegations: Some(to_a),
        version: 0,
    });
    repo.publish();
    let (_s, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    taken(&log);
    assert!(c.find_target("x.img").expect("find").is_none());
    assert_eq!(taken(&log), ["1.a.json", "1.b.json"]);

    let mut options = repo.options();
    options.max_delegations = 2;
    let state = tempfile::tempdir().expect("tempdir");
    TufClient::<FileTransport>::init(state.path(), &repo.root_bytes(1)).expect("init");
    let mut c =
        TufClient::open(state.path(), options, Recording { log: log.clone() }).expect("open");
    c.refresh().expect("refresh");
    taken(&log);
    assert!(c.find_target("x.img").expect("find").is_none());
    assert_eq!(taken(&log), ["1.a.json"], "targets + a = 2 roles");
}

#[test]
fn path_hash_prefixes_select_roles() {
    let mut repo = Repo::new();
    let ka = ed25519();
    let name = "bin/tool";
    let prefix = &crate::hash::sha256_hex(name.as_bytes())[..2];
    repo.delegations = Some(json!({"keys": keys_obj(&[&ka]),
        "roles": [delegation("h", &ka, json!({"prefixes": [prefix]}), false)]}));
    let mut t = BTreeMap::new();
    t.insert(name.to_owned(), target_entry(b"tool", Value::Null));
    repo.delegated.push(Delegated {
        name: "h".into(),
        key: ka,
        targets: t,
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    assert!(c.find_target(name).expect("find").is_some());
}

#[test]
fn delegated_role_signed_by_wrong_key_is_refused() {
    let mut repo = delegating_repo();
    repo.delegated[0].key = ed25519();
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let err = c.find_target("a/one.img").expect_err("bad signature");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, .. } if role == "a"),
        "{err}"
    );
}

#[test]
fn unsafe_target_names_are_refused() {
    let repo = basic_repo();
    let (_s, c) = repo.client();
    for name in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
        let t = Target {
            name: name.into(),
            length: 1,
            digests: crate::hash::Digests {
                sha256: Some([0; 32]),
                sha512: None,
            },
            custom: Value::Null,
        };
        assert!(
            matches!(c.target_url(&t), Err(TufError::InvalidTargetName { .. })),
            "{name}"
        );
    }
}

// ---------- listing every target through delegations ----------

fn names(targets: &[Target]) -> Vec<&str> {
    targets.iter().map(|t| t.name.as_str()).collect()
}

fn sha256_of(targets: &[Target], name: &str) -> Option<[u8; 32]> {
    targets
        .iter()
        .find(|t| t.name == name)
        .and_then(|t| t.digests.sha256)
}

#[test]
fn listing_follows_delegations_in_spec_order_and_trusts_roles_only_for_their_paths() {
    let mut repo = delegating_repo();
    repo.add_target("top.img", b"top level");
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let all = c.all_targets().expect("list");
    assert_eq!(
        names(&all),
        ["a/one.img", "a/two.img", "elsewhere.img", "top.img"]
    );
    // a comes before b: a's a/one.img shadows b's.
    assert_eq!(
        sha256_of(&all, "a/one.img"),
        Some(Sha256::digest(b"one from a").into())
    );
    // a lists elsewhere.img outside its paths: ignored, b's is listed.
    assert_eq!(
        sha256_of(&all, "elsewhere.img"),
        Some(Sha256::digest(b"honest").into())
    );
    // Each listed entry is what the one-name search returns.
    for t in &all {
        assert_eq!(c.find_target(&t.name).expect("find").as_ref(), Some(t));
    }
    // The top-level-only view is unchanged.
    assert_eq!(names(&c.top_level_targets().expect("top")), ["top.img"]);
}

#[test]
fn listing_goes_two_levels_deep_and_checks_paths_on_the_whole_chain() {
    let mut repo = Repo::new();
    let (ka, kd) = (ed25519(), ed25519());
    repo.delegations = Some(json!({"keys": keys_obj(&[&ka]),
        "roles": [delegation("board-a", &ka, json!(["board-a/*"]), false)]}));
    // board-a delegates to "deep" for everything ("*" does not cross '/'),
    // but deep is only trusted where board-a is: board-a/*.
    let to_deep = json!({"keys": keys_obj(&[&kd]),
        "roles": [delegation("deep", &kd, json!(["*", "board-a/*"]), false)]});
    let mut deep = BTreeMap::new();
    deep.insert(
        "board-a/fw-2.img".to_owned(),
        target_entry(b"deep fw", Value::Null),
    );
    deep.insert(
        "stray.img".to_owned(),
        target_entry(b"outside board-a", Value::Null),
    );
    let mut a = BTreeMap::new();
    a.insert(
        "board-a/fw-1.img".to_owned(),
        target_entry(b"fw one", Value::Null),
    );
    repo.delegated.push(Delegated {
        name: "board-a".into(),
        key: ka,
        targets: a,
        delegations: Some(to_deep),
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "deep".into(),
        key: kd,
        targets: deep,
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let all = c.all_targets().expect("list");
    assert_eq!(names(&all), ["board-a/fw-1.img", "board-a/fw-2.img"]);
    assert!(c.find_target("stray.img").expect("find").is_none());
}

#[test]
fn listing_honours_terminating_delegations() {
    let mut repo = delegating_repo();
    let kc = ed25519();
    let mut d = repo.delegations.take().expect("delegations");
    d["keys"][kc.id.clone()] = kc.public.clone();
    d["roles"]
        .as_array_mut()
        .expect("roles")
        .insert(0, delegation("c", &kc, json!(["a/two.img"]), true));
    repo.delegations = Some(d);
    let mut c_targets = BTreeMap::new();
    // c is terminating for a/two.img and does not list it: nobody after c
    // may provide it. What c lists itself still counts.
    c_targets.insert("a/two.img.sig".to_owned(), target_entry(b"x", Value::Null));
    repo.delegated.push(Delegated {
        name: "c".into(),
        key: kc,
        targets: c_targets,
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, c) = repo.client();
    let mut c = c;
    c.refresh().expect("refresh");
    let all = c.all_targets().expect("list");
    assert_eq!(
        names(&all),
        ["a/one.img", "elsewhere.img"],
        "a/two.img is cut off by c, a/two.img.sig is outside c's paths"
    );
}

#[test]
fn listing_skips_a_broken_role_for_the_names_that_reach_it_only() {
    let mut repo = delegating_repo();
    repo.add_target("top.img", b"top level");
    repo.delegated[0].key = ed25519(); // role a now signed by a key nobody trusts
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let all = c
        .all_targets()
        .expect("a broken delegated role is not fatal");
    // a/* names reach a first: the search ends there (spec 5.6.7.2.1).
    assert_eq!(names(&all), ["elsewhere.img", "top.img"]);
}

#[test]
fn listing_fetches_delegated_roles_only_when_the_snapshot_changes_them() {
    let mut repo = delegating_repo();
    let (state, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    taken(&log);
    assert_eq!(c.all_targets().expect("list").len(), 3);
    assert_eq!(taken(&log), ["1.a.json", "1.b.json"]);
    // Idle poll: nothing new, nothing fetched.
    assert_eq!(c.refresh().expect("refresh"), RefreshOutcome::Unchanged);
    taken(&log);
    assert_eq!(c.all_targets().expect("list").len(), 3);
    assert!(taken(&log).is_empty());
    // A restarted agent reads the stored copies.
    drop(c);
    let log2 = Arc::new(Mutex::new(Vec::new()));
    let c = TufClient::open(
        state.path(),
        repo.options(),
        Recording { log: log2.clone() },
    )
    .expect("open");
    assert_eq!(c.all_targets().expect("list").len(), 3);
    assert!(taken(&log2).is_empty());
    // A new release: the roles whose version changed are fetched once.
    repo.delegated[1]
        .targets
        .insert("b-new.img".to_owned(), target_entry(b"new", Value::Null));
    repo.publish();
    let mut c = c;
    c.refresh().expect("refresh");
    taken(&log2);
    assert!(names(&c.all_targets().expect("list")).contains(&"b-new.img"));
    assert_eq!(taken(&log2), ["2.a.json", "2.b.json"]);
    c.all_targets().expect("list");
    assert!(taken(&log2).is_empty());
}

#[test]
fn listing_survives_delegation_cycles_and_honours_the_cap() {
    let mut repo = Repo::new();
    let (ka, kb) = (ed25519(), ed25519());
    let keys = keys_obj(&[&ka, &kb]);
    let to_a = json!({"keys": keys, "roles": [delegation("a", &ka, json!(["*"]), false)]});
    let to_b = json!({"keys": keys, "roles": [delegation("b", &kb, json!(["*"]), false)]});
    repo.delegations = Some(to_a.clone());
    let mut bt = BTreeMap::new();
    bt.insert("b.img".to_owned(), target_entry(b"b", Value::Null));
    repo.delegated.push(Delegated {
        name: "a".into(),
        key: ka,
        targets: BTreeMap::new(),
        delegations: Some(to_b),
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "b".into(),
        key: kb,
        targets: bt,
        delegations: Some(to_a),
        version: 0,
    });
    repo.publish();
    let (_s, mut c, log) = repo.recording_client();
    c.refresh().expect("refresh");
    taken(&log);
    assert_eq!(names(&c.all_targets().expect("list")), ["b.img"]);
    assert_eq!(taken(&log), ["1.a.json", "1.b.json"]);

    let mut options = repo.options();
    options.max_delegations = 1;
    let state = tempfile::tempdir().expect("tempdir");
    TufClient::<FileTransport>::init(state.path(), &repo.root_bytes(1)).expect("init");
    let mut c =
        TufClient::open(state.path(), options, Recording { log: log.clone() }).expect("open");
    c.refresh().expect("refresh");
    taken(&log);
    assert!(
        c.all_targets().expect("list").is_empty(),
        "b is past the cap"
    );
    assert_eq!(taken(&log), ["1.a.json"]);
}

#[test]
fn one_role_delegated_twice_is_trusted_only_with_the_keys_of_each_delegation() {
    // Role "shared" is signed by ks. top delegates it for x/* with ks, and
    // role "other" delegates it for y/* with a key that did not sign it:
    // shared's y/ target must not be listed.
    let mut repo = Repo::new();
    let (ks, ko, kwrong) = (ed25519(), ed25519(), ed25519());
    repo.delegations = Some(json!({"keys": keys_obj(&[&ko]),
        "roles": [delegation("other", &ko, json!(["y/*"]), false)]}));
    let other_deleg = json!({"keys": keys_obj(&[&kwrong]),
        "roles": [delegation("shared", &kwrong, json!(["y/*"]), false)]});
    let mut top_d = repo.delegations.take().expect("d");
    top_d["keys"][ks.id.clone()] = ks.public.clone();
    top_d["roles"]
        .as_array_mut()
        .expect("roles")
        .push(delegation("shared", &ks, json!(["x/*", "y/*"]), false));
    repo.delegations = Some(top_d);
    let mut shared = BTreeMap::new();
    shared.insert("x/1.img".to_owned(), target_entry(b"x1", Value::Null));
    shared.insert("y/1.img".to_owned(), target_entry(b"y1", Value::Null));
    repo.delegated.push(Delegated {
        name: "other".into(),
        key: ko,
        targets: BTreeMap::new(),
        delegations: Some(other_deleg),
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "shared".into(),
        key: ks,
        targets: shared,
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    let all = c.all_targets().expect("list");
    // y/1.img: the search reaches "shared" through "other" first (with
    // kwrong: not verified, the search ends) - not listed. x/1.img: only
    // the top-level delegation (ks) covers it.
    assert_eq!(names(&all), ["x/1.img"]);
    for t in &all {
        assert_eq!(c.find_target(&t.name).expect("find").as_ref(), Some(t));
    }
    assert!(
        c.find_target("y/1.img").is_err(),
        "find_target agrees: not trusted"
    );
}

#[test]
fn a_role_verified_under_one_delegation_is_not_trusted_under_another() {
    // "other" (key ko) delegates role "shared" for y/* to kevil; top
    // delegates "shared" for x/* to ka. The shared file is signed by kevil:
    // good for y/* through "other", worthless for x/*. A search for y/ok
    // must not let x/evil through afterwards (a cache keyed by name only
    // would).
    let mut repo = Repo::new();
    let (ka, ko, kevil) = (ed25519(), ed25519(), ed25519());
    repo.delegations = Some(json!({"keys": keys_obj(&[&ko, &ka]),
        "roles": [delegation("other", &ko, json!(["y/*"]), false),
                  delegation("shared", &ka, json!(["x/*"]), false)]}));
    let other_deleg = json!({"keys": keys_obj(&[&kevil]),
        "roles": [delegation("shared", &kevil, json!(["y/*"]), false)]});
    let mut shared = BTreeMap::new();
    shared.insert("x/evil.img".to_owned(), target_entry(b"evil", Value::Null));
    shared.insert("y/ok.img".to_owned(), target_entry(b"ok", Value::Null));
    repo.delegated.push(Delegated {
        name: "other".into(),
        key: ko,
        targets: BTreeMap::new(),
        delegations: Some(other_deleg),
        version: 0,
    });
    repo.delegated.push(Delegated {
        name: "shared".into(),
        key: kevil,
        targets: shared,
        delegations: None,
        version: 0,
    });
    repo.publish();
    let (_s, mut c) = repo.client();
    c.refresh().expect("refresh");
    assert!(c.find_target("y/ok.img").expect("find").is_some());
    let err = c.find_target("x/evil.img").expect_err("not signed by ka");
    assert!(
        matches!(err, TufError::ThresholdNotMet { ref role, .. } if role == "shared"),
        "{err}"
    );
    assert_eq!(names(&c.all_targets().expect("list")), ["y/ok.img"]);
}
