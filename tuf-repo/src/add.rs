//! `ota-repo add`: streams an image once into the repository's `targets/`
//! (hashing it on the way), lists it as a target with the release fields
//! (and its staged rollout plan, if any), and signs new targets, snapshot
//! and timestamp. [`signing_expiries`] and [`sign_targets`] are the one
//! signing path for new targets content (`rollout set` uses them too).

use crate::config::RepoConfig;
use crate::editor::SignPlan;
use crate::error::{RepoError, Result};
use crate::layout::Layout;
use crate::role::Role;
use crate::state::RepoState;
use crate::target_name;
use ota_common::hash::StreamDigests;
use ota_common::rollout::RolloutPlan;
use ota_common::wire::PayloadCustom;
use ota_common::wire::{is_valid_id, ReleaseCustom};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use tough::schema::{Hashes, Target, Targets};
use tough::TargetName;

pub mod delta;
pub mod pack;
pub use pack::{Compression, Packing};

#[derive(Debug, Clone)]
pub struct AddOptions {
    pub image: PathBuf,
    pub version: String,
    pub hardware_ids: Vec<String>,
    pub notes: Option<String>,
    /// Target name; defaults to the image's file name.
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Added {
    pub name: String,
    pub length: u64,
    pub sha256: String,
    /// Listed only when the target was added with sha512 (`--hash sha512`).
    pub sha512: Option<String>,
    pub targets_version: u64,
}

pub async fn add(layout: &Layout, options: &AddOptions) -> Result<Added> {
    add_with_rollout(layout, options, None).await
}

/// [`add`] with a staged rollout plan signed into the target's
/// `custom.rollout` (`None`: every compatible device, at once).
pub async fn add_with_rollout(
    layout: &Layout,
    options: &AddOptions,
    rollout: Option<RolloutPlan>,
) -> Result<Added> {
    add_packed(layout, options, rollout, &Packing::raw())
        .await
        .map(|(added, _)| added)
}

/// [`add_with_rollout`] with the image packed as `packing` says (the
/// command line's default is zstd). Also returns the signed payload
/// (`None` for a raw target).
pub async fn add_packed(
    layout: &Layout,
    options: &AddOptions,
    rollout: Option<RolloutPlan>,
    packing: &Packing,
) -> Result<(Added, Option<PayloadCustom>)> {
    let config = RepoConfig::load(layout)?;
    let state = RepoState::load(layout).await?;
    let mut release = release_fields(options)?;
    release.rollout = rollout;
    let name = target_name_of(options)?;
    let image = File::open(&options.image).map_err(|source| RepoError::Image {
        path: options.image.clone(),
        source,
    })?;
    check_not_published(&state, &name, &release)?;

    // Everything that could refuse the release is checked before the image
    // is copied: root must be valid, the new expiries in the future, the
    // keys usable.
    let expires = signing_expiries(layout, &config, &state, jiff::Timestamp::now())?;

    let size = image.metadata().map(|m| m.len()).unwrap_or(0);
    let packed = store_packed(layout, &name, &options.image, image, size, packing)?;
    let digests = packed.digests;
    release.payload = packed.payload.clone();
    release.delta = delta_of(layout, &options.image, packing)?;

    let target = target_entry(&digests, &release, packing.list_sha512)?;
    let sha512 = packing.list_sha512.then(|| hex::encode(digests.sha512));
    let mut targets = state.targets.signed.clone();
    let tname =
        TargetName::new(name.clone()).map_err(RepoError::tough(format!("target name {name:?}")))?;
    targets.targets.insert(tname, target);
    let targets_version = sign_targets(layout, &config, &state, targets, expires).await?;
    let added = Added {
        name,
        length: digests.length,
        sha256: hex::encode(digests.sha256),
        sha512,
        targets_version,
    };
    Ok((added, packed.payload))
}

/// `custom.delta` for `--delta`: the image's chunk index, its new chunks stored.
pub(crate) fn delta_of(
    layout: &Layout,
    image: &Path,
    packing: &Packing,
) -> Result<Option<ota_common::wire::DeltaCustom>> {
    if !packing.delta {
        return Ok(None);
    }
    let indexed = delta::index_image(layout, image, ota_common::delta::DEFAULT_PARAMS)?;
    tracing::info!(
        chunks = indexed.chunks,
        reused = indexed.reused,
        index = %indexed.custom.index_sha256,
        "chunk index stored"
    );
    Ok(Some(indexed.custom))
}

/// The signed description of an image: length, sha256 (and sha512 when
/// `list_sha512`), and the release fields as `custom`.
pub(crate) fn target_entry(
    digests: &StreamDigests,
    release: &ReleaseCustom,
    list_sha512: bool,
) -> Result<Target> {
    let mut custom = HashMap::new();
    let value = serde_json::to_value(release)
        .map_err(|e| RepoError::Inconsistent(format!("serializing release fields: {e}")))?;
    if let serde_json::Value::Object(map) = value {
        custom.extend(map);
    }
    Ok(Target {
        length: digests.length,
        hashes: Hashes {
            sha256: digests.sha256.to_vec().into(),
            _extra: if list_sha512 {
                HashMap::from([(
                    "sha512".to_owned(),
                    serde_json::Value::String(hex::encode(digests.sha512)),
                )])
            } else {
                HashMap::new()
            },
        },
        custom,
        _extra: HashMap::new(),
    })
}

/// The image's target name: `--name`, else its file name; validated.
pub(crate) fn target_name_of(options: &AddOptions) -> Result<String> {
    let name = match &options.name {
        Some(n) => n.clone(),
        None => options
            .image
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| RepoError::InvalidTargetName {
                name: options.image.display().to_string(),
                detail: "the image path has no UTF-8 file name; pass --name".to_owned(),
            })?,
    };
    target_name::validate(&name)?;
    Ok(name)
}

/// Checks that new targets content can be signed (root still valid, the
/// policies give future expiries, every key of targets, snapshot and
/// timestamp usable to its threshold) and returns the expiries to sign
/// with. Nothing is written: call it before any irreversible work.
pub fn signing_expiries(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    now: jiff::Timestamp,
) -> Result<BTreeMap<Role, jiff::Timestamp>> {
    let chain = [Role::Targets, Role::Snapshot, Role::Timestamp];
    crate::ceremony::signable_expiries(layout, config, state, &chain, now)
}

/// Signs `targets` as the next targets version, with new snapshot and
/// timestamp (each signature in the audit log), and writes them in the
/// safe order. Returns the new targets version.
pub async fn sign_targets(
    layout: &Layout,
    config: &RepoConfig,
    state: &RepoState,
    targets: Targets,
    expires: BTreeMap<Role, jiff::Timestamp>,
) -> Result<u64> {
    let plan = SignPlan {
        new_targets: Some(targets),
        snapshot: true,
        timestamp: true,
        expires,
        ..SignPlan::default()
    };
    // A role whose keys here stay below its threshold is left pending
    // signatures (`ota-repo ceremony`), not failed and not published.
    crate::ceremony::sign_or_stage(layout, config, state, plan).await?;
    Ok(state.targets.signed.version.get() + 1)
}

pub(crate) fn release_fields(options: &AddOptions) -> Result<ReleaseCustom> {
    let version =
        semver::Version::parse(options.version.trim()).map_err(|e| RepoError::InvalidVersion {
            value: options.version.clone(),
            detail: e.to_string(),
        })?;
    if options.hardware_ids.is_empty() {
        return Err(RepoError::InvalidArgument(
            "at least one --hardware-id is required".to_owned(),
        ));
    }
    let mut hardware_ids: Vec<String> = Vec::new();
    for id in &options.hardware_ids {
        if !is_valid_id(id) {
            return Err(RepoError::InvalidHardwareId(id.clone()));
        }
        if !hardware_ids.contains(id) {
            hardware_ids.push(id.clone());
        }
    }
    Ok(ReleaseCustom {
        version,
        hardware_ids,
        release_notes: options.notes.clone(),
        rollout: None,
        payload: None,
        delta: None,
    })
}

/// Refuses a name already listed (by top-level targets or a delegated
/// role), and a version already published for any of the hardware ids (a
/// device could not tell the two images apart).
pub(crate) fn check_not_published(
    state: &RepoState,
    name: &str,
    release: &ReleaseCustom,
) -> Result<()> {
    for (existing_name, target) in crate::delegated::every_target(state) {
        if existing_name.raw() == name {
            return Err(RepoError::TargetExists {
                name: name.to_owned(),
            });
        }
        let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
        let Ok(existing) = serde_json::from_value::<ReleaseCustom>(custom) else {
            continue;
        };
        if existing.version != release.version {
            continue;
        }
        if let Some(hw) = release
            .hardware_ids
            .iter()
            .find(|hw| existing.hardware_ids.contains(hw))
        {
            return Err(RepoError::VersionPublished {
                version: release.version.to_string(),
                hardware_id: hw.clone(),
                target: existing_name.raw().to_owned(),
            });
        }
    }
    Ok(())
}

/// Copies the target `packing` makes of the image (the image itself, or
/// the compressed file) into `targets/[dir/]<sha256>.<basename>` while
/// hashing it, then, when the target lists sha512, links it as
/// `<sha512>.<basename>`: one read of the
/// image, in constant memory. Its consistent names come from the digests
/// of the bytes stored, as TUF requires.
pub(crate) fn store_packed(
    layout: &Layout,
    name: &str,
    image_path: &Path,
    image: File,
    size: u64,
    packing: &Packing,
) -> Result<pack::Packed> {
    let (dir, base) = target_name::validate(name)?;
    let dest_dir = layout.targets_dir().join(&dir);
    ota_common::atomic::create_dir_all_durable(&dest_dir).map_err(RepoError::io(&dest_dir))?;
    let partial = dest_dir.join(format!(".{base}.partial-{}", std::process::id()));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(RepoError::io(&partial))?;
        let bar = crate::progress::bytes_bar(size, &format!("adding {name}"));
        let packed = pack::pack(image, image_path, &mut out, packing, |n| {
            bar.set_position(n)
        })?;
        bar.finish_and_clear();
        let digests = &packed.digests;
        out.flush().map_err(RepoError::io(&partial))?;
        out.sync_all().map_err(RepoError::io(&partial))?;
        let by_sha256 = dest_dir.join(format!("{}.{base}", hex::encode(digests.sha256)));
        ota_common::atomic::rename_durable(&partial, &by_sha256)
            .map_err(RepoError::io(&by_sha256))?;
        if packing.list_sha512 {
            let by_sha512 = dest_dir.join(format!("{}.{base}", hex::encode(digests.sha512)));
            link_or_copy(&by_sha256, &by_sha512)?;
        }
        Ok(packed)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    // The names are content hashes: an existing file already has these bytes.
    if to.exists() {
        return Ok(());
    }
    if std::fs::hard_link(from, to).is_err() {
        let tmp = to.with_extension("partial-copy");
        std::fs::copy(from, &tmp).map_err(RepoError::io(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(RepoError::io(&tmp))?;
        ota_common::atomic::rename_durable(&tmp, to).map_err(RepoError::io(to))?;
    } else if let Some(parent) = to.parent() {
        ota_common::atomic::fsync_dir(parent).map_err(RepoError::io(parent))?;
    }
    Ok(())
}
