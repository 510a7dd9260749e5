//! Independent verification of the published repository by the device TUF client.

use super::*;

pub(super) fn verify_published(
    layout: &Layout,
    options: &EvidenceOptions,
    files: &[ReleaseFile],
) -> Verification {
    let root_path = options
        .trusted_root
        .clone()
        .unwrap_or_else(|| layout.metadata_dir().join("1.root.json"));
    let mut v = Verification {
        clause: CLAUSE_INTEGRITY,
        trusted_root: root_path.display().to_string(),
        trusted_root_sha256: String::new(),
        metadata_base: String::new(),
        targets_base: String::new(),
        passed: false,
        error: None,
        trusted: TrustedVersions::default(),
        targets: Vec::new(),
    };
    if let Err(e) = run_verification(layout, options, files, &root_path, &mut v) {
        v.error = Some(e);
    }
    v.passed =
        v.error.is_none() && v.targets.len() == files.len() && v.targets.iter().all(|t| t.passed);
    v
}

pub(super) fn run_verification(
    layout: &Layout,
    options: &EvidenceOptions,
    files: &[ReleaseFile],
    root_path: &Path,
    v: &mut Verification,
) -> std::result::Result<(), String> {
    let root = std::fs::read(root_path)
        .map_err(|e| format!("reading the trusted root {}: {e}", root_path.display()))?;
    v.trusted_root_sha256 = hex::encode(Sha256::digest(&root));
    let url_err = |e: RepoError| e.to_string();
    let (metadata_base, targets_base) = match &options.published {
        Published::Repository => (
            dir_url(&layout.metadata_dir()).map_err(url_err)?,
            dir_url(&layout.targets_dir()).map_err(url_err)?,
        ),
        Published::Dir(dir) => (
            dir_url(&dir.join("metadata")).map_err(url_err)?,
            dir_url(&dir.join("targets")).map_err(url_err)?,
        ),
        Published::Url(base) => {
            let base = ClientOptions::new(base.clone(), base.clone()).metadata_base;
            let join = |rel: &str| {
                base.join(rel)
                    .map_err(|e| format!("--published-url {base}: {e}"))
            };
            (join("metadata/")?, join("targets/")?)
        }
    };
    v.metadata_base = metadata_base.to_string();
    v.targets_base = targets_base.to_string();
    // A fresh client state, as on a device that was just flashed.
    let state_dir = tempfile::tempdir()
        .map_err(|e| format!("creating a temporary directory for the client: {e}"))?;
    let client_options = ClientOptions::new(metadata_base, targets_base);
    match &options.published {
        Published::Url(_) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let transport = ota_common::tuf::http::HttpTransport::new(
                std::time::Duration::from_secs(60),
                concat!("ota-repo/", env!("CARGO_PKG_VERSION")),
            )
            .map_err(|e| format!("HTTP client: {e}"))?;
            verify_with(state_dir.path(), &root, client_options, transport, files, v)
        }
        Published::Repository | Published::Dir(_) => verify_with(
            state_dir.path(),
            &root,
            client_options,
            FileTransport,
            files,
            v,
        ),
    }
}

pub(super) fn verify_with<T: Transport>(
    state_dir: &Path,
    root: &[u8],
    options: ClientOptions,
    transport: T,
    files: &[ReleaseFile],
    v: &mut Verification,
) -> std::result::Result<(), String> {
    TufClient::<T>::init(state_dir, root).map_err(|e| format!("trusted root: {e}"))?;
    let mut client =
        TufClient::open(state_dir, options, transport).map_err(|e| format!("TUF client: {e}"))?;
    let refreshed = client.refresh();
    let trusted = client.trusted();
    v.trusted.root_version = Some(trusted.root.version);
    v.trusted.timestamp_version = trusted.timestamp.as_ref().map(|r| r.version);
    v.trusted.snapshot_version = trusted.snapshot.as_ref().map(|r| r.version);
    v.trusted.targets_version = trusted.targets.as_ref().map(|r| r.version);
    refreshed.map_err(|e| format!("refreshing the published metadata: {e}"))?;
    for f in files {
        let detail = check_target(&mut client, f);
        v.targets.push(TargetCheck {
            name: f.name.clone(),
            passed: detail.is_ok(),
            detail: detail.unwrap_or_else(|e| e),
        });
    }
    Ok(())
}

/// Finds the file through the client's target search and streams it,
/// checking length and every digest as the bytes arrive (nothing is kept).
pub(super) fn check_target<T: Transport>(
    client: &mut TufClient<T>,
    f: &ReleaseFile,
) -> std::result::Result<String, String> {
    let target = client
        .find_target(&f.name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "not listed by the published targets metadata".to_owned())?;
    let listed = (
        target.length,
        target.digests.sha256.map(hex::encode),
        target.digests.sha512.map(hex::encode),
    );
    if listed != (f.length, Some(f.sha256.clone()), f.sha512.clone()) {
        return Err(format!(
            "published metadata lists length {} sha256 {} for it, the repository {} and {}",
            target.length,
            listed.1.unwrap_or_default(),
            f.length,
            f.sha256
        ));
    }
    let digests: Digests = target.digests.clone();
    let mut verifier = StreamVerifier::new(digests, target.length).map_err(|e| e.to_string())?;
    let mut reader = client.open_target(&target, 0).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("downloading: {e}")),
        };
        verifier.update(&buf[..n]).map_err(|e| e.to_string())?;
    }
    verifier.finish().map_err(|e| e.to_string())?;
    let digests = if target.digests.sha512.is_some() {
        "sha256 and sha512"
    } else {
        "sha256"
    };
    Ok(format!(
        "downloaded {} bytes; length, {digests} match the signed metadata",
        target.length
    ))
}
