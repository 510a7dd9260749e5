//! Staged rollouts through the real `ota-repo` binary: the wave schedule
//! signed into targets by `add --wave`, refused specs that leave the
//! repository untouched, `rollout set/clear` re-signing what devices then
//! verify, `rollout show` agreeing with the devices' own placement, and
//! `status`'s default expiry window.

use ota_common::rollout::RolloutPlan;
use ota_common::tuf::{ClientOptions, FileTransport, TufClient};
use ota_repo::state::dir_url;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ota_repo(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ota-repo"))
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("OTA_ADMIN_TOKEN")
        .env_remove("OTA_REPO_DIR")
        .output()
        .expect("run ota-repo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "ota-repo failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Repo {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("repo");
        ok(ota_repo(&dir, &["init"]));
        Repo { tmp, dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        ota_repo(&self.dir, args)
    }

    fn image(&self, name: &str) -> String {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, name.repeat(100)).expect("image");
        path.to_str().expect("utf8").to_owned()
    }

    fn add(&self, name: &str, version: &str, extra: &[&str]) -> Output {
        let img = self.image(name);
        let mut args = vec![
            "add",
            &img,
            "--version",
            version,
            "--hardware-id",
            "board-a",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The signed custom fields of `name` in the newest targets metadata.
    fn custom(&self, name: &str) -> Value {
        let ts: Value = read_json(&self.dir.join("metadata/timestamp.json"));
        let snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .expect("snapshot version");
        let snap = read_json(&self.dir.join(format!("metadata/{snap_v}.snapshot.json")));
        let targets_v = snap["signed"]["meta"]["targets.json"]["version"]
            .as_u64()
            .expect("targets version");
        let targets = read_json(&self.dir.join(format!("metadata/{targets_v}.targets.json")));
        targets["signed"]["targets"][name]["custom"].clone()
    }

    /// Every file of the repository (metadata, images, audit log, config), by path.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).expect("read"));
                }
            }
        }
        out
    }

    /// Our device-side client, from a fresh trusted root: the plan of
    /// `name` as a device sees it, and the targets version it trusts.
    fn device_view(&self, name: &str) -> (Option<RolloutPlan>, u64) {
        let state = tempfile::tempdir().expect("client dir");
        let root = std::fs::read(self.dir.join("metadata/1.root.json")).expect("root");
        TufClient::<FileTransport>::init(state.path(), &root).expect("client init");
        let options = ClientOptions::new(
            dir_url(&self.dir.join("metadata")).expect("url"),
            dir_url(&self.dir.join("targets")).expect("url"),
        );
        let mut client = TufClient::open(state.path(), options, FileTransport).expect("open");
        client.refresh().expect("our client verifies the metadata");
        let version = client
            .trusted()
            .targets
            .as_ref()
            .expect("targets trusted")
            .version;
        let target = client
            .top_level_targets()
            .expect("targets")
            .into_iter()
            .find(|t| t.name == name)
            .expect("target listed");
        (target.release().expect("release").rollout, version)
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

const WAVES: [&str; 6] = [
    "--wave",
    "canary=bench@+0h",
    "--wave",
    "early=10%@+24h",
    "--wave",
    "all=100%@+3d",
];

#[test]
fn add_signs_the_wave_schedule_into_targets() {
    let r = Repo::new();
    let mut args = WAVES.to_vec();
    args.extend([
        "--rollout-start",
        "2026-12-01T00:00:00Z",
        "--rollout-seed",
        "5f0c2a9e41d7b3a8",
    ]);
    let out = ok(r.add("a.img", "1.0.0", &args));
    assert!(
        out.contains("rollout seed 5f0c2a9e41d7b3a8, waves canary, early, all"),
        "{out}"
    );
    assert_eq!(
        r.custom("a.img")["rollout"],
        json!({
            "seed": "5f0c2a9e41d7b3a8",
            "waves": [
                {"name": "canary", "groups": ["bench"], "not_before": "2026-12-01T00:00:00Z"},
                {"name": "early", "percent": 10, "not_before": "2026-12-02T00:00:00Z"},
                {"name": "all", "percent": 100, "not_before": "2026-12-04T00:00:00Z"}
            ]
        })
    );
    let (plan, _) = r.device_view("a.img");
    assert_eq!(plan.expect("plan").waves.len(), 3);

    // Defaults: a random 16-digit seed, relative times from now; a plan
    // that stops short of 100 % is signed with a warning.
    let o = r.add(
        "b.img",
        "1.1.0",
        &["--wave", "lab=lab-a,lab-b,5%@2026-12-01T08:00:00Z"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("devices outside every wave never install this release"),
        "{}",
        stderr(&o)
    );
    let rollout = &r.custom("b.img")["rollout"];
    let seed = rollout["seed"].as_str().expect("seed");
    assert_eq!(seed.len(), 16);
    assert!(seed
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(rollout["waves"][0]["groups"], json!(["lab-a", "lab-b"]));
    assert_eq!(rollout["waves"][0]["percent"], json!(5));

    // Without --wave: no plan, as before.
    ok(r.add("c.img", "1.2.0", &[]));
    assert!(r.custom("c.img").get("rollout").is_none());
    assert_eq!(r.custom("c.img")["version"], "1.2.0");
}

#[test]
fn malformed_specs_are_named_and_change_nothing() {
    let r = Repo::new();
    ok(r.add("a.img", "1.0.0", &["--wave", "all=100%@+1h"]));
    let cases: &[(&[&str], &str)] = &[
        (&["--wave", "early10%@+1h"], "no '='"),
        (&["--wave", "early=10%"], "no '@WHEN'"),
        (&["--wave", "early=0%@+1h"], "1% to 100%"),
        (&["--wave", "early=150%@+1h"], "1% to 100%"),
        (&["--wave", "early=5%,10%@+1h"], "more than one percentage"),
        (&["--wave", "early=5%@+2w"], "+<n>m"),
        (&["--wave", "early=5%@soon"], "RFC 3339"),
        (&["--wave", "bad name=5%@+1h"], "not an id"),
        (&["--wave", "early=lab a@+1h"], "group \"lab a\""),
        (
            &["--wave", "a=50%@+1h", "--wave", "b=10%@+2h"],
            "percentages are cumulative",
        ),
        (
            &["--wave", "a=5%@+2h", "--wave", "b=10%@+1h"],
            "opens before the wave ahead",
        ),
        (&["--wave", "a=5%@+1h", "--wave", "a=10%@+2h"], "used twice"),
        (
            &["--wave", "a=5%@+1h", "--rollout-seed", "XYZ"],
            "rollout seed must be 8 to 64 lowercase hex",
        ),
        (
            &["--wave", "a=5%@+1h", "--rollout-start", "monday"],
            "--rollout-start \"monday\"",
        ),
        (&["--rollout-seed", "abcdef01"], "at least one --wave"),
    ];
    let before = r.snapshot();
    for (i, (flags, expected)) in cases.iter().enumerate() {
        let o = r.add("b.img", &format!("2.0.{i}"), flags);
        assert_eq!(o.status.code(), Some(1), "{flags:?} accepted");
        let err = stderr(&o);
        assert!(err.contains(expected), "{flags:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        // Every spec error quotes the spec at fault.
        if i < 12 {
            assert!(
                err.contains(&format!("--wave {:?}", flags[flags.len() - 1])),
                "{flags:?} not named: {err}"
            );
        }

        let mut set = vec!["rollout", "set", "a.img"];
        set.extend_from_slice(flags);
        let o = r.run(&set);
        assert_eq!(o.status.code(), Some(1), "set {flags:?} accepted");
        assert!(
            stderr(&o).contains(expected),
            "set {flags:?}: {}",
            stderr(&o)
        );
    }
    let o = r.run(&["rollout", "set", "a.img"]);
    assert!(stderr(&o).contains("at least one --wave"), "{}", stderr(&o));
    let o = r.run(&["rollout", "set", "missing.img", "--wave", "a=5%@+1h"]);
    assert!(
        stderr(&o).contains("no target named \"missing.img\""),
        "{}",
        stderr(&o)
    );
    let o = r.run(&["rollout", "show", "missing.img"]);
    assert_eq!(o.status.code(), Some(1));
    let o = r.run(&["rollout", "show", "a.img", "--device-id", "bad id"]);
    assert!(
        stderr(&o).contains("--device-id \"bad id\""),
        "{}",
        stderr(&o)
    );

    // The image was never copied, nothing signed, nothing logged.
    let after = r.snapshot();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{} changed", path.display());
    }
}

#[test]
fn rollout_set_and_clear_resign_what_devices_verify() {
    let r = Repo::new();
    let mut args = WAVES.to_vec();
    args.extend(["--rollout-start", "2026-12-01T00:00:00Z"]);
    ok(r.add("a.img", "1.0.0", &args));
    let (first, v1) = r.device_view("a.img");
    let first = first.expect("plan");
    let audit_before = std::fs::read_to_string(r.dir.join("audit.jsonl")).expect("audit");

    // Speed up: everyone after a day, same seed so devices keep their place.
    let out = ok(r.run(&[
        "rollout",
        "set",
        "a.img",
        "--wave",
        "early=10%@+0h",
        "--wave",
        "all=100%@+1d",
        "--rollout-start",
        "2026-12-01T00:00:00Z",
    ]));
    assert!(
        out.contains(&format!("signed targets version {}", v1 + 1)),
        "{out}"
    );
    let (second, v2) = r.device_view("a.img");
    let second = second.expect("plan");
    assert_eq!(v2, v1 + 1);
    assert_eq!(second.seed, first.seed);
    assert_eq!(second.waves.len(), 2);
    assert_eq!(
        second.waves[1].not_before.to_rfc3339(),
        "2026-12-02T00:00:00+00:00"
    );
    // Signed like add: one entry per signature (targets, snapshot, timestamp).
    let audit_after = std::fs::read_to_string(r.dir.join("audit.jsonl")).expect("audit");
    assert_eq!(
        audit_after.lines().count(),
        audit_before.lines().count() + 3
    );
    assert!(ok(r.run(&["audit", "verify"])).contains("intact"));
    // Release fields are kept.
    assert_eq!(r.custom("a.img")["version"], "1.0.0");
    assert_eq!(r.custom("a.img")["hardware_ids"], json!(["board-a"]));

    // The same plan again signs nothing.
    let out = ok(r.run(&[
        "rollout",
        "set",
        "a.img",
        "--wave",
        "early=10%@+0h",
        "--wave",
        "all=100%@+1d",
        "--rollout-start",
        "2026-12-01T00:00:00Z",
    ]));
    assert!(out.contains("nothing signed"), "{out}");

    // A new seed only when asked for.
    ok(r.run(&[
        "rollout",
        "set",
        "a.img",
        "--wave",
        "all=100%@+0h",
        "--rollout-seed",
        "0123456789abcdef",
    ]));
    let (third, v3) = r.device_view("a.img");
    assert_eq!(third.expect("plan").seed, "0123456789abcdef");
    assert_eq!(v3, v2 + 1);

    // Clear: everyone at once.
    let out = ok(r.run(&["rollout", "clear", "a.img"]));
    assert!(out.contains("removed"), "{out}");
    let (none, v4) = r.device_view("a.img");
    assert!(none.is_none());
    assert_eq!(v4, v3 + 1);
    assert!(ok(r.run(&["rollout", "clear", "a.img"])).contains("nothing signed"));
    let show = ok(r.run(&["rollout", "show", "a.img", "--device-id", "d1"]));
    assert!(show.contains("no rollout plan"), "{show}");
    assert!(show.contains("may install now"), "{show}");
}

#[test]
fn rollout_show_places_devices_as_devices_do() {
    let r = Repo::new();
    ok(r.add(
        "a.img",
        "1.0.0",
        &[
            "--wave",
            "canary=bench@2020-01-01T00:00:00Z",
            "--wave",
            "early=30%@2020-01-02T00:00:00Z",
            "--wave",
            "late=60%@2999-01-01T00:00:00Z",
        ],
    ));
    let (plan, _) = r.device_view("a.img");
    let plan = plan.expect("plan");

    let text = ok(r.run(&["rollout", "show", "a.img"]));
    assert!(
        text.contains(&format!("rollout seed {}", plan.seed)),
        "{text}"
    );
    assert!(
        text.contains("1. canary: group bench; opens 2020-01-01T00:00:00Z (open)"),
        "{text}"
    );
    assert!(
        text.contains("3. late: 60% of the fleet; opens 2999-01-01T00:00:00Z (not yet open)"),
        "{text}"
    );

    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let id = format!("dev-{i}");
        let groups: Vec<String> = if i % 7 == 0 {
            vec!["bench".into()]
        } else {
            vec![]
        };
        let mut args = vec![
            "rollout",
            "show",
            "a.img",
            "--device-id",
            id.as_str(),
            "--json",
        ];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", joined.as_str()]);
        }
        let v: Value = serde_json::from_str(&ok(r.run(&args))).expect("json");
        let d = &v["device"];
        assert_eq!(d["position"], json!(plan.position(&id)), "{id}");
        let expected = plan.wave_of(&id, &groups);
        assert_eq!(
            d["wave_index"].as_u64().map(|i| i as usize),
            expected,
            "{id}"
        );
        let may = d["may_install_now"].as_bool().expect("bool");
        assert_eq!(may, matches!(expected, Some(0 | 1)), "{id}");
        if expected == Some(2) {
            assert_eq!(d["opens"], "2999-01-01T00:00:00Z");
        }
        *seen.entry(expected).or_insert(0) += 1;

        let text = ok(r.run(&["rollout", "show", "a.img", "--device-id", &id]));
        assert!(
            text.contains(&format!("position {} of 10000", plan.position(&id))),
            "{text}"
        );
    }
    // 40 devices over these waves: each outcome occurs.
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&ok(r.run(&["rollout", "show", "a.img", "--json"])))
            .expect("json")["waves"][1]["open"],
        true
    );
}

#[test]
fn status_default_window_fits_each_roles_lifetime() {
    let r = Repo::new();
    // Fresh repository, default policies (timestamp 7d): nothing to report.
    let o = r.run(&["status"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("warn within 2d 8h"));

    // A timestamp with a day left (its daily re-signing stopped): flagged.
    ok(r.run(&["resign", "--expires", "timestamp=1d"]));
    let o = r.run(&["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("timestamp metadata expires soon")
            && stderr(&o).contains("within 2d 8h"),
        "{}",
        stderr(&o)
    );
    // An explicit window applies as given.
    assert_eq!(
        r.run(&["status", "--warn-within", "12h"]).status.code(),
        Some(0)
    );
    assert_eq!(
        r.run(&["status", "--warn-within", "14d"]).status.code(),
        Some(2)
    );

    // Long-lived roles keep the 14-day horizon.
    ok(r.run(&["resign"]));
    ok(r.run(&["resign", "--expires", "targets=10d"]));
    let o = r.run(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("targets metadata expires soon"),
        "{}",
        stderr(&o)
    );
}
