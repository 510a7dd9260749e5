//! Writing the evidence: JSON, and Markdown for the auditor.

use super::*;

impl Evidence {
    /// Writes `evidence-RELEASE.md` and `evidence-RELEASE.json` into `dir`
    /// (atomically each) and returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
        let md = dir.join(format!("evidence-{}.md", self.release));
        let json = dir.join(format!("evidence-{}.json", self.release));
        let mut json_bytes = serde_json::to_vec_pretty(self).map_err(|source| RepoError::Json {
            path: json.clone(),
            source,
        })?;
        json_bytes.push(b'\n');
        ota_common::atomic::write_atomic(&json, &json_bytes).map_err(RepoError::io(&json))?;
        ota_common::atomic::write_atomic(&md, self.markdown().as_bytes())
            .map_err(RepoError::io(&md))?;
        Ok((md, json))
    }

    /// The human-readable report.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "yes" } else { "**NO**" };
        let flag = |b: Option<bool>| match b {
            Some(true) => "true",
            Some(false) => "false",
            None => "not reported",
        };
        let _ = writeln!(o, "# Release evidence: {}\n", self.release);
        let _ = writeln!(
            o,
            "Standard: {}. Generated {} by `ota-repo evidence` from repository `{}`.\n",
            self.standard, self.generated_at, self.repository
        );
        let _ = writeln!(
            o,
            "**Result: {}**\n",
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for f in &self.failures {
            let _ = writeln!(o, "* FAILED: {f}");
        }
        for w in &self.warnings {
            let _ = writeln!(o, "* Warning: {w}");
        }

        let _ = writeln!(o, "\n## 1. Release files ({CLAUSE_INTEGRITY})\n");
        let _ = writeln!(
            o,
            "Every file of the release is listed in the signed targets metadata with these values; devices refuse any byte that does not match.\n"
        );
        let _ = writeln!(
            o,
            "| file | hardware ids | length | SHA-256 | SHA-512 | signed by role |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for f in &self.files {
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | `{}` | `{}` | {} |",
                f.name,
                f.hardware_ids.join(", "),
                f.length,
                f.sha256,
                f.sha512.as_deref().unwrap_or("(not listed)"),
                f.signed_by
            );
        }

        let _ = writeln!(
            o,
            "\n## 2. Signatures and expiry of the metadata ({CLAUSE_INTEGRITY})\n"
        );
        let _ = writeln!(
            o,
            "| role | version | expires | threshold | valid signatures | threshold met | signing key ids |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for r in &self.roles {
            let ids = r
                .signatures
                .iter()
                .map(|s| format!("`{}`{}", s.keyid, if s.valid { "" } else { " (invalid)" }))
                .collect::<Vec<_>>()
                .join("<br>");
            let _ = writeln!(
                o,
                "| {} | {} | {}{} | {} of {} | {} | {} | {} |",
                r.role,
                r.version,
                r.expires,
                if r.expired { " **EXPIRED**" } else { "" },
                r.threshold,
                r.keyids.len(),
                r.valid_signatures,
                yes(r.threshold_met),
                ids
            );
        }

        let _ = writeln!(
            o,
            "\n## 3. Signing keys and their protection ({CLAUSE_KEYS})\n"
        );
        let _ = writeln!(
            o,
            "Attributes are read back from the token with C_GetAttributeValue, not taken from the generation request.\n"
        );
        let _ = writeln!(
            o,
            "| role | key id | scheme | where it lives | CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_EXTRACTABLE | CKA_NEVER_EXTRACTABLE | CKA_LOCAL | CKA_PRIVATE | CKA_SIGN | CKA_ALLOWED_MECHANISMS |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for k in &self.keys {
            let (attrs, mechs) = match &k.protection {
                Some(p) => (
                    [
                        flag(p.sensitive),
                        flag(p.always_sensitive),
                        flag(p.extractable),
                        flag(p.never_extractable),
                        flag(p.local),
                        flag(p.private),
                        flag(p.sign),
                    ]
                    .join(" | "),
                    p.allowed_mechanisms
                        .as_ref()
                        .map(|m| {
                            if m.is_empty() {
                                "(empty: any)".to_owned()
                            } else {
                                m.join(", ")
                            }
                        })
                        .unwrap_or_else(|| "not supported by the token".to_owned()),
                ),
                None => {
                    let why = match (&k.protection_error, k.storage) {
                        (Some(e), _) => format!("not read: {e}"),
                        (None, "software-file") => {
                            "n/a: software key file (development only)".to_owned()
                        }
                        (None, _) => "n/a: offline key".to_owned(),
                    };
                    ([why.as_str(); 7].join(" | "), "–".to_owned())
                }
            };
            let token = k
                .protection
                .as_ref()
                .map(|p| {
                    format!(
                        " ({} {}, serial {})",
                        p.token_manufacturer, p.token_model, p.token_serial
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {}{} | {} | {} |",
                k.role, k.keyid, k.scheme, k.location, token, attrs, mechs
            );
        }

        let _ = writeln!(o, "\n## 4. Signing audit log ({CLAUSE_KEYS})\n");
        let _ = writeln!(
            o,
            "Log `{}`: {}.\n",
            self.audit.log, self.audit.verify_result
        );
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            o,
            "Targets versions containing the release: {}; snapshot versions listing them: {}.\n",
            list(&self.audit.targets_versions),
            list(&self.audit.snapshot_versions)
        );
        entry_table(&mut o, &self.audit.entries);
        if let Some(online) = &self.online_audit {
            let _ = writeln!(o, "\n### Online signing by the server ({CLAUSE_KEYS})\n");
            let _ = writeln!(o, "Log `{}`: {}.\n", online.log, online.verify_result);
            let _ = writeln!(
                o,
                "Its timestamp and snapshot signatures from {} (the release's first signature in the repository's log) until {} (the repository's first snapshot without the release):\n",
                online.from.as_deref().unwrap_or("– (none in the repository's log)"),
                online.until.as_deref().unwrap_or("now")
            );
            entry_table(&mut o, &online.entries);
        }

        let v = &self.verification;
        let _ = writeln!(
            o,
            "\n## 5. Independent verification of the published repository ({CLAUSE_INTEGRITY})\n"
        );
        let _ = writeln!(
            o,
            "The device TUF client (ota-common, verification only) started from the trusted root `{}` (sha256 `{}`), walked the root chain and refreshed from `{}`, then downloaded every file of the release from `{}` and checked its length and digests.\n",
            v.trusted_root, v.trusted_root_sha256, v.metadata_base, v.targets_base
        );
        let ver = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_else(|| "–".to_owned());
        let _ = writeln!(
            o,
            "Trusted after refresh: root {}, timestamp {}, snapshot {}, targets {}.\n",
            ver(v.trusted.root_version),
            ver(v.trusted.timestamp_version),
            ver(v.trusted.snapshot_version),
            ver(v.trusted.targets_version)
        );
        if let Some(e) = &v.error {
            let _ = writeln!(o, "**FAILED:** {e}\n");
        }
        let _ = writeln!(o, "| file | verified | detail |");
        let _ = writeln!(o, "|---|---|---|");
        for t in &v.targets {
            let _ = writeln!(o, "| `{}` | {} | {} |", t.name, yes(t.passed), t.detail);
        }
        let _ = writeln!(
            o,
            "\nResult of the independent verification: **{}**",
            if v.passed { "PASSED" } else { "FAILED" }
        );
        o
    }
}
