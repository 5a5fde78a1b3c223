//! The crate arrows of the workspace point one way: tools -> cli -> ops -> {meta, format, dev},
//! meta -> {format, dev}, and format and dev depend on no blkpipe crate. Read from every
//! Cargo.toml (normal, build and dev dependencies alike), so a wrong arrow, or a new crate
//! not placed in this table, fails here. blkpipe-testkit (test builders) may only be a
//! dev-dependency, so no tool links it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Which blkpipe crates each crate may depend on (a crate may always name itself: the
/// dev-dependency that turns on its own test features).
const ALLOWED: &[(&str, &[&str])] = &[
    // The tool binaries (the root package).
    (
        "blkpipe",
        &[
            "blkpipe-cli",
            "blkpipe-ops",
            "blkpipe-meta",
            "blkpipe-format",
            "blkpipe-dev",
            "blkpipe-testkit",
        ],
    ),
    ("blkpipe-gen", &["blkpipe-cli"]),
    (
        "blkpipe-cli",
        &[
            "blkpipe-ops",
            "blkpipe-meta",
            "blkpipe-format",
            "blkpipe-dev",
        ],
    ),
    (
        "blkpipe-ops",
        &[
            "blkpipe-meta",
            "blkpipe-format",
            "blkpipe-dev",
            "blkpipe-testkit",
        ],
    ),
    // blkpipe-testkit only as a dev-dependency (its image builder in meta's unit tests): the
    // test builders depend on meta, so this is the one cycle, and it never reaches a tool.
    (
        "blkpipe-meta",
        &["blkpipe-format", "blkpipe-dev", "blkpipe-testkit"],
    ),
    // Test builders (a dev-dependency of meta, ops and the tools' tests).
    ("blkpipe-testkit", &["blkpipe-meta", "blkpipe-dev"]),
    ("blkpipe-format", &[]),
    ("blkpipe-dev", &[]),
];

/// The package name and the blkpipe crates a Cargo.toml names in any dependency table.
fn blkpipe_deps(toml: &str) -> (String, Vec<String>) {
    let mut name = String::new();
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in toml.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_owned();
            // `[dependencies.blkpipe-x]`
            if let Some((table, dep)) = section.rsplit_once('.') {
                if table.ends_with("dependencies") && dep.starts_with("blkpipe") {
                    deps.push(dep.to_owned());
                }
            }
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or("");
        if section == "package" && key == "name" {
            name = line.split('"').nth(1).unwrap_or("").to_owned();
        }
        if section.ends_with("dependencies") && key.starts_with("blkpipe") {
            deps.push(key.to_owned());
        }
    }
    (name, deps)
}

/// Whether a Cargo.toml names `dep` in a dependency table other than a dev-dependencies one
/// (or `[workspace.dependencies]`, which only declares it).
fn normal_deps_name(toml: &str, dep: &str) -> bool {
    let normal = |section: &str| !section.contains("dev-") && !section.starts_with("workspace.");
    let mut section = String::new();
    for line in toml.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_owned();
            if section.ends_with(&format!("dependencies.{dep}")) && normal(&section) {
                return true;
            }
            continue;
        }
        let key = line.split(['=', '.', ' ']).next().unwrap_or("");
        if key == dep && section.ends_with("dependencies") && normal(&section) {
            return true;
        }
    }
    false
}

#[test]
fn crate_arrows_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut manifests = vec![root.join("Cargo.toml")];
    for e in fs::read_dir(root.join("crates")).unwrap() {
        let m = e.unwrap().path().join("Cargo.toml");
        if m.exists() {
            manifests.push(m);
        }
    }
    let mut seen = Vec::new();
    for m in manifests {
        let (name, deps) = blkpipe_deps(&fs::read_to_string(&m).unwrap());
        let Some(ok) = allowed.get(name.as_str()) else {
            panic!(
                "{}: crate {name:?} has no place in the arrow table of {}",
                m.display(),
                file!()
            );
        };
        assert!(
            !normal_deps_name(&fs::read_to_string(&m).unwrap(), "blkpipe-testkit"),
            "{}: {name} has blkpipe-testkit outside [dev-dependencies]",
            m.display()
        );
        for d in deps {
            assert!(
                d == name || ok.contains(&d.as_str()),
                "{}: {name} depends on {d}: the arrows are {name} -> {ok:?}",
                m.display()
            );
        }
        seen.push(name);
    }
    assert!(seen.len() >= ALLOWED.len(), "found only {seen:?}");
}

#[test]
fn testkit_only_as_a_dev_dependency() {
    let t = "blkpipe-testkit";
    assert!(!normal_deps_name(
        "[workspace.dependencies]\nblkpipe-testkit = { path = \"x\" }\n",
        t
    ));
    assert!(!normal_deps_name(
        "[dev-dependencies]\nblkpipe-testkit.workspace = true\n",
        t
    ));
    assert!(normal_deps_name(
        "[dependencies]\nblkpipe-testkit.workspace = true\n",
        t
    ));
    assert!(normal_deps_name(
        "[build-dependencies.blkpipe-testkit]\npath = \"x\"\n",
        t
    ));
    assert!(normal_deps_name(
        "[target.'cfg(unix)'.dependencies]\nblkpipe-testkit = { path = \"x\" }\n",
        t
    ));
}

#[test]
fn the_reader_sees_every_form() {
    let (name, deps) = blkpipe_deps(
        "[package]\nname = \"blkpipe-meta\"\n[dependencies]\nblkpipe-ops.workspace = true\n\
         blkpipe-dev = { path = \"x\" }\nlibc = \"0.2\"\n[dev-dependencies.blkpipe-cli]\npath = \"y\"\n\
         [target.'cfg(unix)'.build-dependencies]\nblkpipe-gen = \"1\"\n",
    );
    assert_eq!(name, "blkpipe-meta");
    assert_eq!(
        deps,
        ["blkpipe-ops", "blkpipe-dev", "blkpipe-cli", "blkpipe-gen"]
    );
}
