//! The signing audit logs' entries for the release, the repository's and the server's.

use super::*;

pub(super) fn audit_evidence(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    files: &[ReleaseFile],
) -> Result<AuditEvidence> {
    let log = crate::editor::audit_log(layout, config);
    let (intact, verify_result) = verify_log(&log);
    let meta = layout.metadata_dir();
    // Targets versions that list every file of the release with the same hashes.
    let mut targets_versions = Vec::new();
    for v in 1..=state.targets.signed.version.get() {
        let Some(doc) = read_json(&meta.join(format!("{v}.targets.json"))) else {
            continue;
        };
        if lists_all(&doc, files.iter()) {
            targets_versions.push(v);
        }
    }
    let mut snapshot_versions = Vec::new();
    for v in 1..=state.snapshot.signed.version.get() {
        let Some(doc) = read_json(&meta.join(format!("{v}.snapshot.json"))) else {
            continue;
        };
        let tv = doc
            .pointer("/signed/meta/targets.json/version")
            .and_then(|v| v.as_u64());
        if tv.is_some_and(|tv| targets_versions.contains(&tv)) {
            snapshot_versions.push(v);
        }
    }
    // Versions of each delegated role that list every file it signed.
    let mut delegated_versions: Vec<(String, u64)> = Vec::new();
    for role in crate::delegation::roles(state) {
        let mine: Vec<&ReleaseFile> = files.iter().filter(|f| f.signed_by == role.name).collect();
        let Some(current) = role.targets.as_ref().map(|t| t.signed.version.get()) else {
            continue;
        };
        if mine.is_empty() {
            continue;
        }
        for v in 1..=current {
            let Some(doc) = read_json(&meta.join(format!("{v}.{}.json", role.name))) else {
                continue;
            };
            if lists_all(&doc, mine.iter().copied()) {
                delegated_versions.push((role.name.clone(), v));
            }
        }
    }
    // Older timestamps are not kept; the current one counts when it points
    // at a snapshot that contains the release.
    let timestamp_version = state.timestamp.signed.version.get();
    let current_snapshot = state.snapshot.signed.version.get();
    let timestamp_counts = snapshot_versions.contains(&current_snapshot);
    let entries = log
        .entries()
        .into_iter()
        .filter(|e| match e.role.as_str() {
            "targets" => targets_versions.contains(&e.version),
            "snapshot" => snapshot_versions.contains(&e.version),
            "timestamp" => timestamp_counts && e.version == timestamp_version,
            other => delegated_versions
                .iter()
                .any(|(r, v)| r == other && *v == e.version),
        })
        .collect();
    Ok(AuditEvidence {
        clause: CLAUSE_KEYS,
        log: log.path().display().to_string(),
        intact,
        verify_result,
        entries,
        targets_versions,
        snapshot_versions,
    })
}

/// Whether targets metadata `doc` lists each of `files` with its sha256.
pub(super) fn lists_all<'a>(
    doc: &serde_json::Value,
    mut files: impl Iterator<Item = &'a ReleaseFile>,
) -> bool {
    files.all(|f| {
        doc.pointer("/signed/targets")
            .and_then(|t| t.get(&f.name))
            .and_then(|t| t.pointer("/hashes/sha256"))
            .and_then(|h| h.as_str())
            == Some(f.sha256.as_str())
    })
}

/// `(intact, what audit verify said)` for an audit log.
pub(super) fn verify_log(log: &crate::audit::AuditLog) -> (bool, String) {
    match log.verify() {
        Ok(n) => (true, format!("audit log intact: {n} entries")),
        Err(e) => (false, e.to_string()),
    }
}

pub(super) fn entry_time(e: &AuditEntry) -> Option<jiff::Timestamp> {
    e.time.parse().ok()
}

pub(super) fn online_audit_evidence(
    file: &Path,
    repo_log: &crate::audit::AuditLog,
    audit: &AuditEvidence,
) -> Result<OnlineAuditEvidence> {
    // A missing file would verify as an empty log.
    if !file.is_file() {
        return Err(RepoError::InvalidArgument(format!(
            "--online-audit {}: no such file",
            file.display()
        )));
    }
    let log = crate::audit::AuditLog::at_file(file);
    let (intact, verify_result) = verify_log(&log);
    // The release became current with its first signature here ...
    let from = audit.entries.iter().filter_map(entry_time).min();
    // ... and stopped being so with a later snapshot that does not list it.
    let last_listing = audit.snapshot_versions.iter().max().copied();
    let until = from.and_then(|from| {
        repo_log
            .entries()
            .iter()
            .filter(|e| {
                e.role == "snapshot"
                    && last_listing.is_some_and(|v| e.version > v)
                    && !audit.snapshot_versions.contains(&e.version)
            })
            .filter_map(entry_time)
            .filter(|t| *t >= from)
            .min()
    });
    let entries = match from {
        Some(from) => log
            .entries()
            .into_iter()
            .filter(|e| e.role == "timestamp" || e.role == "snapshot")
            .filter(|e| entry_time(e).is_some_and(|t| t >= from && until.is_none_or(|u| t < u)))
            .collect(),
        None => Vec::new(),
    };
    Ok(OnlineAuditEvidence {
        clause: CLAUSE_KEYS,
        log: file.display().to_string(),
        intact,
        verify_result,
        from: from.map(|t| t.to_string()),
        until: until.map(|t| t.to_string()),
        entries,
    })
}

/// Audit entries as a Markdown table.
pub(super) fn entry_table(o: &mut String, entries: &[AuditEntry]) {
    let _ = writeln!(
        o,
        "| seq | time (UTC) | operator | action | role | version | key id | key location | sha256 of signed bytes |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for e in entries {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | `{}` | {} | `{}` |",
            e.seq,
            e.time,
            e.operator,
            e.action,
            e.role,
            e.version,
            e.keyid,
            e.key_location,
            e.sha256
        );
    }
}

pub(super) fn read_json(path: &Path) -> Option<serde_json::Value> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}
